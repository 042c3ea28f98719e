"""The CLIP and ResNet50 baselines load real checkpoint files and embed exactly as their
own libraries would (model + the authors' evaluation preprocessing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamsearch.errors import WeightsError
from dreamsearch.models import load_model
from tests.helpers.official_layout import write_resnet50_checkpoint


def _reference_vectors(model, transform, paths) -> np.ndarray:
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        return torch.nn.functional.normalize(model(batch), dim=-1).numpy()


@pytest.fixture(scope="module")
def clip_weights(openai_clip_weights) -> Path:
    """A random OpenAI CLIP ViT-B/32 as OpenAI publishes it (TorchScript archive)."""
    return openai_clip_weights(archive=True)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["openai_archive", "float32_state_dict"])
def test_clip_baseline_matches_open_clip(layout, openai_clip_weights, sample_images):
    """The reference is open_clip's own loader, which made every ``clip`` vector stored
    before ours: same file in, same vectors out, for OpenAI's file and for a fine-tune;
    and ours loads either without a warning (torch.jit's deprecation once reached users)."""
    import open_clip

    root = openai_clip_weights(archive=layout == "openai_archive")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        reference = open_clip.load_openai_model(str(root / "baselines" / "ViT-B-32.pt"), precision="fp32", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = load_model("clip", weights_dir=root, device="cpu")
    assert [str(w.message) for w in caught] == []
    vectors = ours.embed_images([Image.open(p).convert("RGB") for p in sample_images])
    expected = _reference_vectors(reference.encode_image, open_clip.image_transform(224, is_train=False), sample_images)
    assert vectors.shape == (len(sample_images), 512)
    assert np.abs(vectors - expected).max() <= 1e-5
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # distinct images, distinct vectors


#: Loads ``clip``, then indexes a folder and queries it through the CLI, in one fresh
#: process; prints which of open_clip and what it pulls in were imported by then.
NO_OPEN_CLIP = """
import json, sys
from dreamsearch.cli import main
from dreamsearch.models import load_model
HEAVY = ("open_clip", "torchvision", "transformers", "torch._dynamo")
weights, library, folder, query = sys.argv[1:5]
load_model("clip", weights_dir=weights, device="cpu")
loaded = [m for m in HEAVY if m in sys.modules]
common = ["-m", "clip", "--library", library, "--weights-dir", weights, "--device", "cpu"]
main(["index", folder, *common], standalone_mode=False)
main(["query", query, "--json", *common], standalone_mode=False)
print(json.dumps({"after_load": loaded, "after_query": [m for m in HEAVY if m in sys.modules]}))
"""


@pytest.mark.slow
def test_clip_loads_and_answers_queries_without_open_clip(clip_weights, tmp_path, sample_images):
    """open_clip and what it pulls in cost ~4.5 s to import on 2 cores: ``clip`` never needs them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_images[:2]:
        shutil.copyfile(path, folder / path.name)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_OPEN_CLIP,
            str(clip_weights),
            str(tmp_path / "library"),
            str(folder),
            str(sample_images[2]),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    *_, answer, modules = result.stdout.strip().splitlines()
    assert json.loads(modules) == {"after_load": [], "after_query": []}
    (query,) = json.loads(answer)["queries"]
    assert {Path(hit["path"]).name for hit in query["results"]} == {p.name for p in sample_images[:2]}


@pytest.mark.slow
def test_resnet50_baseline_matches_torchvision(tmp_path, sample_images):
    from torchvision.models import ResNet50_Weights

    reference = write_resnet50_checkpoint(tmp_path)
    ours = load_model("resnet50", weights_dir=tmp_path, device="cpu")
    vectors = ours.embed_images([Image.open(p).convert("RGB") for p in sample_images])
    reference.fc = torch.nn.Identity()
    expected = _reference_vectors(reference, ResNet50_Weights.IMAGENET1K_V1.transforms(), sample_images)
    assert vectors.shape == (len(sample_images), 2048)
    assert np.abs(vectors - expected).max() <= 1e-5


def test_damaged_baseline_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "resnet50-0676ba61.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="resnet50-0676ba61.pth: not a torchvision ResNet50 checkpoint"):
        load_model("resnet50", weights_dir=tmp_path, device="cpu")


def test_a_resnet50_checkpoint_lacking_a_tensor_is_a_one_line_error(tmp_path):
    (tmp_path / "baselines").mkdir()
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "baselines" / "resnet50-0676ba61.pth")
    with pytest.raises(WeightsError) as raised:
        load_model("resnet50", weights_dir=tmp_path, device="cpu")
    message = str(raised.value)
    assert "resnet50-0676ba61.pth: not a torchvision ResNet50 checkpoint" in message and "bn1.weight" in message
    assert "\n" not in message, message


def test_a_checkpoint_without_a_clip_image_tower_is_a_clear_error(tmp_path):
    (tmp_path / "baselines").mkdir()
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "baselines" / "ViT-B-32.pt")
    with pytest.raises(WeightsError, match=r"ViT-B-32.pt: not an OpenAI CLIP ViT checkpoint \(no visual.proj\)"):
        load_model("clip", weights_dir=tmp_path, device="cpu")
