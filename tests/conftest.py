"""Shared fixtures: offline mode for every test, and a folder of real encoded images.

Model fixtures import ``official_layout`` (torch, the official package) only when used: a
test that needs no model starts without paying seconds for torch. The full-size ones are
made once per run for both pytest-xdist workers (``tests/helpers/shared.py``)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # every hub lookup would otherwise wait ~50 s here
os.environ["DREAMSEARCH_OFFLINE"] = "1"
# Models run on torch in the tests, as where OpenVINO is not installed; the OpenVINO path
# has its own gate (tests/models/test_openvino.py), which asks for it. Converting every
# test's model took 10-60 s each and would cover the torch path nowhere.
os.environ["DREAMSEARCH_BACKEND"] = "torch"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dreamsearch.models.saved_graph import without_telemetry  # noqa: E402
from tests.helpers.images import photo_like  # noqa: E402
from tests.helpers.shared import made_once, run_folder  # noqa: E402

# The product keeps OpenVINO's and NNCF's usage statistics off by importing openvino only
# after this; here the OpenVINO test modules import it at collection (``importorskip``),
# which turned them on for every conversion in the run: each sent Google Analytics events
# from a thread pool (~1.5 s of a tiny model's 2 s conversion on the quiet 2-core machine,
# 7 s loaded).
without_telemetry()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """The folder both pytest-xdist workers of this run see, for ``made_once`` inputs."""
    return run_folder(tmp_path_factory)


@pytest.fixture(scope="session")
def sample_images(run_dir) -> list[Path]:
    """JPEG and PNG files of odd sizes, one greyscale: the conformance inputs (one folder
    for the run: ``official_vectors`` are theirs)."""

    def write(folder: Path) -> None:
        folder.mkdir()
        photo_like(301, 199, 1).save(folder / "wide.jpg", quality=90)
        photo_like(150, 257, 2).save(folder / "tall.png")
        photo_like(97, 61, 3).convert("L").save(folder / "grey.jpg", quality=85)
        photo_like(640, 480, 4).save(folder / "photo.jpg", quality=75, progressive=True)

    folder = made_once(run_dir, "sample_images", write)
    return [folder / name for name in ("wide.jpg", "tall.png", "grey.jpg", "photo.jpg")]


@pytest.fixture(scope="session")
def official_cache(run_dir):
    """``official_cache(type)`` → a folder the official package loads offline as
    ``dreamsim(cache_dir=..., dreamsim_type=type)``, one per type, written once per run
    (5-10 s each on 2 cores). Each type's weights are the same whichever test asks first (a
    fixed seed per backbone and adapter: order-dependent seeds once made a gate test pass
    or fail by worker). Tests read it; a saved OpenVINO graph is the product's own cache."""
    from tests.helpers import official_layout

    def make(dreamsim_type: str) -> Path:
        return made_once(
            run_dir,
            f"official_cache_{dreamsim_type}",
            lambda root: official_layout.write_official_cache(root, dreamsim_type, seed=1),
        )

    return make


@pytest.fixture(scope="session")
def official_vectors(run_dir, official_cache, sample_images):
    """``official_vectors(type)`` → what the official package embeds ``sample_images`` as,
    from ``official_cache(type)``: the oracle of the conformance and OpenVINO tests, asked
    once per run (the official ensemble: 5-10 s on 2 cores)."""
    from tests.helpers import official_layout

    def make(dreamsim_type: str) -> np.ndarray:
        def embed(path: Path) -> None:
            root = official_cache(dreamsim_type)
            np.save(path, official_layout.official_embeddings(root, dreamsim_type, sample_images))

        return np.load(made_once(run_dir, f"official_vectors_{dreamsim_type}.npy", embed))

    return make


@pytest.fixture(scope="session")
def openai_clip_weights(run_dir):
    """``openai_clip_weights(archive)`` → a weights folder holding a random OpenAI CLIP
    ViT-B/32 where the ``clip`` baseline looks (``write_openai_clip``: OpenAI's TorchScript
    archive, or a float32 state dict), written once per run (scripting it: seconds)."""
    from tests.helpers import official_layout

    def make(archive: bool) -> Path:
        name = "openai_clip_archive" if archive else "openai_clip_state_dict"
        return made_once(run_dir, name, lambda root: official_layout.write_openai_clip(root, archive=archive))

    return make


@pytest.fixture(scope="session")
def decode_device() -> str:
    """Where the batched JPEG decoder runs: torchvision's CPU backend here and in CI, and
    ``cuda`` when benchmarks/gpu_check.sh runs these tests on a GPU machine."""
    return os.environ.get("DREAMSEARCH_TEST_DECODE_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A small DreamSim-DINO in the official layout (64 wide, 2 blocks) for pipeline tests,
    with its OpenVINO graph saved for the servers and CLIs tests start (``backends``)."""
    from tests.helpers import official_layout
    from tests.helpers.backends import with_saved_graphs

    return with_saved_graphs(official_layout.write_tiny_cache(tmp_path_factory.mktemp("tiny_weights")), "dreamsim-dino")


@pytest.fixture(scope="module")
def as_users_run():
    """This module's servers and CLIs, and its own models, on the product's default backend."""
    from tests.helpers.backends import AS_USERS_RUN

    with pytest.MonkeyPatch.context() as patch:
        for name, value in AS_USERS_RUN.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def tiny_model(tiny_weights):
    from dreamsearch.models import load_model

    return load_model("dreamsim-dino", weights_dir=tiny_weights, device="cpu")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n 2 --dist loadgroup``), the Ray tests share one worker: two
    local Ray clusters at once would fight over the same 2 cores and ports. The mark must be
    added before xdist reads it (added after, it was ignored: each worker started a cluster).
    pytest 9.2 with pytest-xdist 3.8 ignores every group (pytest-xdist#1386), hence the test
    extra's ``pytest<9.2``."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
