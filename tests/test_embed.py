"""One decode for every picture embedded: `dreamsearch embed`, `Library.embed` and
`POST /api/embed` give a large JPEG the same vector (it once decoded in full in `embed`
only), and `--no-draft` / `draft=False` give the official full decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dreamsearch import Library
from dreamsearch.images import open_rgb
from dreamsearch.server.app import create_app
from tests.helpers.cli import invoke
from tests.helpers.http_api import upload
from tests.helpers.images import photo_like

MODEL = "dreamsim-dino"


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory) -> Path:
    """Large enough for JPEG draft to decode it at half size (its model input is 224)."""
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    photo_like(1800, 1400, 7).save(path, quality=92)
    return path


def embedded(jpeg: Path, out: Path, weights: Path, *options: str) -> np.ndarray:
    args = ("embed", str(jpeg), "-m", MODEL, "--weights-dir", str(weights), "--device", "cpu", "-o", str(out))
    result = invoke(*args, *options)
    assert result.exit_code == 0, result.output
    return np.load(out)[0]


def test_embed_the_api_and_the_server_give_a_large_jpeg_the_same_vector(large_jpeg, tiny_weights, tmp_path):
    from_cli = embedded(large_jpeg, tmp_path / "v.npy", tiny_weights)
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        from_api = library.embed(large_jpeg, MODEL)
        full = library.embed(large_jpeg, MODEL, draft=False)
        from_files = library.embed_files([large_jpeg], MODEL).vectors[0]
        with TestClient(create_app(library, [MODEL]), base_url="http://127.0.0.1") as client:
            served = client.post("/api/embed", files=upload(large_jpeg)).json()["vector"]
    assert not np.array_equal(from_api, full)  # draft decoding changed the pixels: the test can tell
    assert np.array_equal(from_cli, from_api) and np.array_equal(from_files, from_api)
    assert np.array_equal(np.asarray(served, dtype=np.float32), from_api)


def test_no_draft_embeds_the_full_decode(large_jpeg, tiny_weights, tiny_model, tmp_path):
    full = tiny_model.embed(tiny_model.preprocess(open_rgb(large_jpeg))[None])[0]
    assert np.array_equal(embedded(large_jpeg, tmp_path / "v.npy", tiny_weights, "--no-draft"), full)
