"""Shared fixtures: offline mode for every test, and a folder of real encoded images.

Model fixtures import ``official_layout`` (torch, the official package) only when used: a
test that needs no model starts without paying seconds for torch."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # every hub lookup would otherwise wait ~50 s here
os.environ["DREAMSEARCH_OFFLINE"] = "1"
# Models run on torch in the tests, as where OpenVINO is not installed; the OpenVINO path
# has its own gate (tests/models/test_openvino.py), which asks for it. Converting every
# test's model took 10-60 s each and would cover the torch path nowhere.
os.environ["DREAMSEARCH_BACKEND"] = "torch"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers.images import photo_like  # noqa: E402


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> list[Path]:
    """JPEG and PNG files of odd sizes, one greyscale: the conformance inputs."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    photo_like(301, 199, 1).save(folder / "wide.jpg", quality=90)
    photo_like(150, 257, 2).save(folder / "tall.png")
    photo_like(97, 61, 3).convert("L").save(folder / "grey.jpg", quality=85)
    photo_like(640, 480, 4).save(folder / "photo.jpg", quality=75, progressive=True)
    for name in ("wide.jpg", "tall.png", "grey.jpg", "photo.jpg"):
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="session")
def official_cache(tmp_path_factory):
    """``official_cache(type)`` → a folder the official package loads offline as
    ``dreamsim(cache_dir=..., dreamsim_type=type)``; all types share one folder, and each
    type's weights are the same whichever test asks first (a fixed seed per backbone and
    adapter: order-dependent seeds once made a gate test pass or fail by worker)."""
    from tests.helpers import official_layout

    root = tmp_path_factory.mktemp("official_cache")
    written: set[str] = set()

    def make(dreamsim_type: str) -> Path:
        if dreamsim_type not in written:
            official_layout.write_official_cache(root, dreamsim_type, seed=1)
            written.add(dreamsim_type)
        return root

    return make


@pytest.fixture(scope="session")
def decode_device() -> str:
    """Where the batched JPEG decoder runs: torchvision's CPU backend here and in CI, and
    ``cuda`` when benchmarks/gpu_check.sh runs these tests on a GPU machine."""
    return os.environ.get("DREAMSEARCH_TEST_DECODE_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A small DreamSim-DINO in the official layout (64 wide, 2 blocks) for pipeline tests."""
    from tests.helpers import official_layout

    return official_layout.write_tiny_cache(tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture(scope="session")
def tiny_model(tiny_weights):
    from dreamsearch.models import load_model

    return load_model("dreamsim-dino", weights_dir=tiny_weights, device="cpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n 2 --dist loadgroup``), the Ray tests share one worker: two
    local Ray clusters at once would fight over the same 2 cores and ports."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
