"""The CLIP and ResNet50 baselines load real checkpoint files and embed exactly as their
own libraries would (model + the authors' evaluation preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dreamsearch.errors import WeightsError
from dreamsearch.models import load_model
from tests.helpers.official_layout import write_clip_checkpoint, write_resnet50_checkpoint


def _reference_vectors(model, transform, paths) -> np.ndarray:
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        return torch.nn.functional.normalize(model(batch), dim=-1).numpy()


@pytest.mark.slow
def test_clip_baseline_matches_open_clip(tmp_path, sample_images):
    reference, transform = write_clip_checkpoint(tmp_path)
    ours = load_model("clip", weights_dir=tmp_path, device="cpu")
    vectors = ours.embed_images([Image.open(p).convert("RGB") for p in sample_images])
    expected = _reference_vectors(reference.encode_image, transform, sample_images)
    assert vectors.shape == (len(sample_images), 512)
    assert np.abs(vectors - expected).max() <= 1e-5


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
