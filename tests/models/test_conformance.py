"""Our DreamSim embeddings equal the official package's, for every DreamSim type.

Both implementations load the same seeded random weights from one official-layout
folder; the official one runs with peft's unmerged LoRA, hooks and naive attention."""

from __future__ import annotations

import numpy as np
import pytest

from dreamsearch.batch_embed import embed_files
from dreamsearch.models import load_model

TYPES = {
    "dreamsim": "ensemble",
    "dreamsim-dino": "dino_vitb16",
    "dreamsim-clip": "clip_vitb32",
    "dreamsim-open-clip": "open_clip_vitb32",
    "dreamsim-dinov2": "dinov2_vitb14",
    "dreamsim-synclr": "synclr_vitb16",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TYPES)
def test_embeddings_match_official_package(name, official_cache, official_vectors, sample_images):
    root = official_cache(TYPES[name])
    expected = official_vectors(TYPES[name])

    ours = load_model(name, weights_dir=root, device="cpu", allow_download=False)
    result = embed_files(ours, sample_images, batch_size=3, draft=False)

    assert result.failures == []
    assert result.vectors.shape == expected.shape == (len(sample_images), ours.dim)
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-6)
    assert np.abs(result.vectors - expected).max() <= 1e-5
    # The images are distinct, so a model that ignored its input would fail here.
    assert np.abs(expected[0] - expected[1]).max() > 1e-3


@pytest.mark.slow
def test_compiled_model_gives_the_same_embeddings(tiny_weights, sample_images):
    """The tiny model takes the same compile path as a full-size one, in half the time
    (Inductor's C++ builds: 16 s against 31 s on 2 cores); eager is held to the official
    package by the tests above."""
    eager = load_model("dreamsim-dino", weights_dir=tiny_weights, device="cpu")
    compiled = load_model("dreamsim-dino", weights_dir=tiny_weights, device="cpu", compile=True)
    expected = embed_files(eager, sample_images, batch_size=3, draft=False).vectors
    # batch 3 runs compiled, the last (partial) batch of 1 runs eager
    result = embed_files(compiled, sample_images, batch_size=3, draft=False).vectors
    assert compiled.compile, "compilation fell back to eager"
    assert np.abs(result - expected).max() <= 1e-5
