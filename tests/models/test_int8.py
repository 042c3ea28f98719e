"""``--precision int8`` passes every agreement gate against float32, per DreamSim branch,
on a network with outlier activations; its vectors never share an index with
float32 ones; and the gates themselves catch a scheme known to be too coarse."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("nncf", reason="nncf is not installed (pip install 'dreamsearch[int8]')")
pytestmark = pytest.mark.slow  # full-size ViT-B branches converted and compressed: 20-40 s each on 2 cores

from dreamsearch.models import PendingModel, openvino_backend, precision, saved_graph  # noqa: E402
from dreamsearch.models.agreement import GATES, MIN_PICTURES, in_batches, measure  # noqa: E402
from dreamsearch.models.embedder import Embedder  # noqa: E402
from tests.helpers.images import pictures_with_near_copies  # noqa: E402
from tests.helpers.official_layout import write_tiny_cache  # noqa: E402
from tests.helpers.shared import made_once  # noqa: E402

BRANCHES = {"dreamsim-dino": "dino_vitb16", "dreamsim-clip": "clip_vitb32", "dreamsim-open-clip": "open_clip_vitb32"}


@pytest.fixture(autouse=True)
def default_backend(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.stack([np.asarray(p.resize((224, 224), 3)) for p in pictures_with_near_copies(MIN_PICTURES)])


def _int8_handle(name: str, official_cache) -> PendingModel:
    return PendingModel(
        name, weights_dir=official_cache(BRANCHES[name]), device="cpu", allow_download=False, precision="int8"
    )


@pytest.fixture(scope="module")
def float32_vectors(run_dir, official_cache, pixels):
    """``float32_vectors(name, reference)`` → the float32 torch vectors of ``pixels``, every
    gate's reference, computed once per run (DINO's ViT-B/16 over the 40 pictures: 5-10 s
    here) by ``reference``, the caller's unchanged torch reference of ``name``."""

    def make(name: str, reference: Embedder) -> np.ndarray:
        def embed(path) -> None:
            np.save(path, in_batches(reference.embed, pixels))

        return np.load(made_once(run_dir, f"int8_float32_vectors_{name}.npy", embed))

    return make


def outliers_(network: torch.nn.Module, factor: float = 20.0, channels: int = 4) -> int:
    """Give every LayerNorm that feeds a Linear a few outlier channels (γ and β times
    ``factor``) and divide the Linear's matching input columns by ``factor``: the float32
    function is unchanged, the activations int8 must quantise are not. Returns how many
    LayerNorm-Linear pairs were changed."""
    changed = 0
    with torch.no_grad():
        for block in network.modules():
            for norm_name, linear in (
                ("norm1", getattr(getattr(block, "attn", None), "qkv", None)),
                ("norm2", getattr(getattr(block, "mlp", None), "fc1", None)),
            ):
                norm = getattr(block, norm_name, None)
                if norm is None or linear is None:
                    continue
                picked = torch.arange(channels) * 97 % norm.weight.numel()
                norm.weight[picked] *= factor
                norm.bias[picked] *= factor
                linear.weight[:, picked] /= factor
                changed += 1
    return changed


def _int8_of(changed: Embedder, tmp_path) -> Embedder:
    """``changed`` (a torch reference whose network a test changed) run in int8, through
    the backend's own fold, conversion and compression."""
    openvino_backend.attach(changed, tmp_path, "changed", "int8")  # a fingerprint of its own: not the cache's
    return changed


def _with_outliers(reference: Embedder) -> Embedder:
    """``reference`` (a float32 torch reference) after ``outliers_``, changed in place."""
    assert outliers_(reference.network) > 0
    return reference


@pytest.mark.parametrize("name", BRANCHES)
def test_int8_passes_every_gate_per_branch_with_outlier_activations(
    name, official_cache, float32_vectors, pixels, tmp_path
):
    """Converted once per branch, with the outliers: the network as trained (here random,
    with no outlier channels) is the easy case of the same fold, conversion and compression,
    and ``handle.load()`` reaching int8 is checked on the tiny model below."""
    handle = _int8_handle(name, official_cache)
    reference = handle.torch_reference()
    expected = float32_vectors(name, reference)  # before the outliers, if computed here
    with_outliers = _with_outliers(reference)  # the float32 function is unchanged:
    assert np.abs(in_batches(with_outliers.embed, pixels[:4]) - expected[:4]).max() < 1e-4

    candidate = _int8_of(with_outliers, tmp_path)  # the same network, not built again
    assert candidate.backend == "openvino int8"
    agreement = measure(expected, candidate.embed, pixels, handle.spec.duplicate_distance)
    assert agreement.failures() == [], agreement
    assert agreement.cosine_mean < 1 - 1e-7  # it is int8: not the float32 numbers themselves


def test_without_folding_and_with_one_scale_per_token_the_outliers_fail_the_gates(
    official_cache, float32_vectors, pixels, tmp_path, monkeypatch
):
    """The scheme the research found too coarse (LayerNorm scales left in the activations,
    one activation scale per whole token) fails on the same outliers: the gates can fail,
    for the reason they exist. On the DINO branch: on OpenCLIP's ViT-B/32 the same scheme
    missed the distance gate only on some random weights (the seed depends on test order)."""
    handle = _int8_handle("dreamsim-dino", official_cache)
    reference = handle.torch_reference()
    expected = float32_vectors("dreamsim-dino", reference)  # before the outliers and the scheme, if computed here
    monkeypatch.setattr(openvino_backend, "fold_norm_scales", lambda network: network)
    monkeypatch.setattr(saved_graph, "INT8_GROUP", 768)  # ViT-B's width: one scale per token
    failures = measure(
        expected, _int8_of(_with_outliers(reference), tmp_path).embed, pixels, handle.spec.duplicate_distance
    ).failures()
    assert any(line.startswith(GATES["cosine_mean"].label) for line in failures), failures
    assert any(line.startswith(GATES["distance_change"].label) for line in failures), failures


def test_nncf_compresses_on_numpy_and_the_environment_is_left_as_it_was(tmp_path, monkeypatch):
    """NNCF's default compiles a small OpenVINO model per weight to compress it (made for
    LLMs' huge matrices): 1.6-2.2 CPU-s for DINO's ViT-B, against 0.3 on numpy for the very
    same int8 weights. Its switch is an environment variable, set only while it works."""
    import nncf

    monkeypatch.delenv(openvino_backend.NNCF_ON_NUMPY, raising=False)
    seen = []
    real = nncf.compress_weights

    def compress(*args, **kwargs):
        seen.append(os.environ.get(openvino_backend.NNCF_ON_NUMPY))
        return real(*args, **kwargs)

    monkeypatch.setattr(nncf, "compress_weights", compress)
    handle = PendingModel(
        "dreamsim-dino", weights_dir=write_tiny_cache(tmp_path / "weights"), device="cpu", precision="int8"
    )
    assert handle.load().backend == "openvino int8"
    assert seen == ["1"] and openvino_backend.NNCF_ON_NUMPY not in os.environ


def test_converting_and_compressing_contacts_no_one(tmp_path):
    """OpenVINO's converter and NNCF send usage statistics to Google Analytics unless a
    consent file says no; a photo tool must not. Run outside pytest, which NNCF itself
    treats as a reason to stay quiet, on the tiny model: both report the same calls
    whatever the model's size (the full-size branch took 10-15 s of conversion here)."""
    weights = write_tiny_cache(tmp_path / "weights", "open_clip_vitb32")
    script = f"""
import socket, sys
contacted = []
real_connect = socket.socket.connect
def connect(self, address):
    contacted.append(address)
    return real_connect(self, address)
socket.socket.connect = connect
import numpy as np
from dreamsearch.models import PendingModel, openvino_backend
handle = PendingModel("dreamsim-open-clip", weights_dir={str(weights)!r}, device="cpu",
                      allow_download=False, precision="int8")
candidate = handle.torch_reference()
openvino_backend.attach(candidate, __import__("pathlib").Path({str(tmp_path)!r}), "no-telemetry", "int8")
candidate.embed(np.zeros((1, 224, 224, 3), np.uint8))
import nncf.telemetry.wrapper as nncf_telemetry
from openvino.tools.ovc import telemetry_utils
print(type(nncf_telemetry.telemetry).__name__, telemetry_utils.tm.__name__, contacted)
"""
    env = {**os.environ, "NNCF_CI": "", "CI": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # NNCF's own stub is a MagicMock; the converter's, a module of no-op functions
    assert done.stdout.split() == ["MagicMock", "openvino.tools.ovc.telemetry_stub", "[]"], done.stdout
