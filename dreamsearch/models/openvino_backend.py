"""float32 CPU inference through OpenVINO, when the ``openvino`` extra is installed.

Why: on this project's 2-core CPU OpenVINO runs the same float32 network faster than
torch (benchmarks/openvino_speed.py; docs/performance.md#openvino-fp32), with embeddings
within 1e-5 of the official package (tests/models/test_openvino.py is the gate: a backend
that fails it does not ship, so its vectors keep the torch path's weights fingerprint).

The whole step ``uint8 [B, S, S, 3]`` → unit vectors (scaling, the network, the L2
normalisation) is converted from the torch module once, with a dynamic batch size.
Converting costs 10-60 s on 2 cores (the ensemble: 10 s lightly loaded, 56 s busy) and
reading the converted model back and compiling it ~1 s, so it is saved under
``<weights>/openvino/``, keyed by the weights fingerprint, the OpenVINO and torch versions
and the source of ``dreamsearch.models`` (a code change never reuses a stale graph). A
read-only weights folder keeps the conversion in memory for the process.

``DREAMSEARCH_BACKEND=torch`` turns it off (an environment variable rather than an option:
models are built by the CLI, the server, the Python API and Ray workers alike, and each
reads it the same way); ``openvino`` insists on it; unset uses it where installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamsearch.errors import DreamsearchError
from dreamsearch.models.base import Embedder

ENV = "DREAMSEARCH_BACKEND"
CACHE_FOLDER = "openvino"


def chosen_backend() -> str:
    """``torch`` or ``openvino``: what ``DREAMSEARCH_BACKEND`` asks for, else OpenVINO when installed."""
    wanted = os.environ.get(ENV, "").strip().lower()
    installed = importlib.util.find_spec("openvino") is not None
    if wanted in ("", "auto"):
        return "openvino" if installed else "torch"
    if wanted not in ("torch", "openvino"):
        raise DreamsearchError(f"{ENV}={wanted!r} is not a backend (use torch or openvino)")
    if wanted == "openvino" and not installed:
        raise DreamsearchError(f"{ENV}=openvino, but openvino is not installed (pip install 'dreamsearch[openvino]')")
    return wanted


def attach(embedder: Embedder, root: Path, fingerprint: str) -> None:
    """Route ``embedder``'s float32 CPU calls through OpenVINO when that is the chosen
    backend; CUDA (and any autocast) stays on torch, and so does a model asked to be
    ``torch.compile``d (an explicit request wins over a default)."""
    if chosen_backend() != "openvino":  # first: a misspelt DREAMSEARCH_BACKEND is told on any device
        return
    if embedder.device.type != "cpu" or embedder.autocast_dtype is not None or embedder.compile:
        return
    embedder.runner = _compiled(embedder, root, fingerprint)
    embedder.backend = "openvino"


class _Whole(torch.nn.Module):
    """``Embedder.embed``'s arithmetic as one module, so OpenVINO runs all of it."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float().div(255)
        return F.normalize(self.network(x).float(), dim=-1)


def _compiled(embedder: Embedder, root: Path, fingerprint: str) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    size = embedder.preprocess_spec.size
    path = root / CACHE_FOLDER / f"{embedder.name}-{_cache_key(fingerprint)}.xml"
    model = _read(ov, path)
    if model is None:
        model = _convert(ov, embedder.network, size)
        _save(ov, model, path, embedder.name)
        # as later runs will (the saved graph compiles slightly differently: ~1e-7)
        model = _read(ov, path) or model
    # f32 explicitly: OpenVINO may pick bf16 on CPUs with AMX or AVX512-BF16 (far from 1e-5).
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    compiled = ov.Core().compile_model(model, "CPU", config)

    def run(batch: np.ndarray) -> np.ndarray:
        # a request per call: ModelPool shares one embedder between threads
        return compiled.create_infer_request().infer({0: np.ascontiguousarray(batch)})[0]

    return run


def _cache_key(fingerprint: str) -> str:
    import openvino as ov

    digest = hashlib.sha256(f"{fingerprint}|{ov.__version__}|{torch.__version__}".encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _convert(ov, network: torch.nn.Module, size: int):
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants
        return ov.convert_model(_Whole(network).eval(), example_input=example,
                                input=[(ov.PartialShape([-1, size, size, 3]), ov.Type.u8)])


def _read(ov, path: Path):
    """The saved conversion, or None when there is none (or it cannot be read: converted again)."""
    if not path.exists():
        return None
    try:
        return ov.Core().read_model(str(path))
    except Exception:  # OpenVINO raises RuntimeError subclasses for damaged files
        return None


def _save(ov, model, path: Path, name: str) -> None:
    """Write ``path`` (.xml + .bin) atomically and drop older conversions of this model;
    a folder we may not write keeps the conversion in memory only."""
    try:
        path.parent.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
            staged = Path(tmp) / path.name
            ov.save_model(model, str(staged), compress_to_fp16=False)  # the default would halve the weights
            os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(staged, path)  # the .xml last: it is what marks the pair complete
        for old in path.parent.glob(f"{name}-*"):
            if old.stem.rsplit("-", 1)[0] == name and old.stem != path.stem and old.suffix in (".xml", ".bin"):
                old.unlink(missing_ok=True)
    except (OSError, RuntimeError):  # OpenVINO reports a failed write as RuntimeError
        pass
