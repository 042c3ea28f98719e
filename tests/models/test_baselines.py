"""The CLIP and ResNet50 baselines load real checkpoint files and embed exactly as their
own libraries would (model + the authors' evaluation preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dreamsearch.errors import WeightsError
from dreamsearch.models import load_model


def _reference_vectors(model, transform, paths) -> np.ndarray:
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        return torch.nn.functional.normalize(model(batch), dim=-1).numpy()


@pytest.mark.slow
def test_clip_baseline_matches_open_clip(tmp_path, sample_images):
    import open_clip

    torch.manual_seed(3)
    reference, _, transform = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
    reference.eval()
    # OpenAI's checkpoint is stored in fp16 and open_clip's loader rounds through fp16,
    # so use fp16-representable weights like the real file.
    reference.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    (tmp_path / "baselines").mkdir()
    torch.save(reference.state_dict(), tmp_path / "baselines" / "ViT-B-32.pt")

    ours = load_model("clip", weights_dir=tmp_path, device="cpu")
    vectors = ours.embed_images([Image.open(p).convert("RGB") for p in sample_images])
    expected = _reference_vectors(reference.encode_image, transform, sample_images)
    assert vectors.shape == (len(sample_images), 512)
    assert np.abs(vectors - expected).max() <= 1e-5


@pytest.mark.slow
def test_resnet50_baseline_matches_torchvision(tmp_path, sample_images):
    from torchvision.models import ResNet50_Weights, resnet50

    torch.manual_seed(4)
    reference = resnet50(weights=None).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    (tmp_path / "baselines").mkdir()
    torch.save(reference.state_dict(), tmp_path / "baselines" / "resnet50-0676ba61.pth")

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
