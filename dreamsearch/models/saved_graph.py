"""A model's saved OpenVINO graph: where it lives, and running it without torch.

Why: a cold ``query`` spent most of its time importing torch and building the network from
its checkpoint, only to hand it to OpenVINO. The first load of a model on OpenVINO converts
it and saves the graph (``openvino_backend``); every later process reads that graph and
compiles it directly, importing neither torch nor the model code
(docs/performance.md#cold-commands). Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import threading
from pathlib import Path

import numpy as np

from dreamsearch.models.embedder import Embedder, Runner
from dreamsearch.models.precision import DEFAULT_PRECISION
from dreamsearch.models.registry import ModelSpec

FOLDER = "openvino"
#: Channels per activation scale in int8 (``DYNAMIC_QUANTIZATION_GROUP_SIZE``). On a
#: ViT-B/16 at 2 threads: 32 (the plugin's default) 1.7x float32, 128 2.0-2.2x, a whole
#: token per scale no faster than float32 (and, without the LayerNorm fold, failing the
#: outlier gate); tests/models/test_int8.py.
INT8_GROUP = 128


def without_telemetry() -> None:
    """Keep OpenVINO's converter and NNCF from sending usage statistics: both do, to Google
    Analytics, unless a consent file says no (openvino_telemetry's rule), and a photo tool
    contacts nothing its user did not ask for. Their own fallback, when the package cannot
    be imported, is a no-op stub."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: the import fails, as meant


def graph_path(root: Path, name: str, precision: str, weights_fingerprint: str) -> Path:
    """Where the graph of ``name`` at ``precision`` for these weights is saved. The key
    hashes the weights, the OpenVINO, torch and NNCF versions and the source of
    ``dreamsearch/models/``: other weights or other code never reuse a stale graph."""
    versions = [_version(package) for package in ("openvino", "torch", "nncf")]
    digest = hashlib.sha256("|".join([weights_fingerprint, *versions]).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    stem = name if precision == DEFAULT_PRECISION else f"{name}-{precision}"
    return root / FOLDER / f"{stem}-{digest.hexdigest()[:16]}.xml"


def read(path: Path):
    """The saved graph, or None when there is none (or it cannot be read: converted again)."""
    if not path.exists():
        return None
    without_telemetry()
    import openvino as ov

    try:
        return ov.Core().read_model(str(path))
    except Exception:  # OpenVINO raises RuntimeError subclasses for damaged files
        return None


def runner(model, precision: str, threads: int) -> Runner:
    """``model`` compiled for the CPU: ``uint8 [B, S, S, 3]`` in, unit vectors out."""
    import openvino as ov

    # f32 explicitly: OpenVINO may pick bf16 on CPUs with AMX or AVX512-BF16 (far from 1e-5).
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    if precision != DEFAULT_PRECISION:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = INT8_GROUP
    compiled = ov.Core().compile_model(model, "CPU", config)

    def infer(batch: np.ndarray) -> np.ndarray:
        # a request per call: ModelPool shares one embedder between threads
        return compiled.create_infer_request().infer({0: np.ascontiguousarray(batch)})[0]

    def run(batch: np.ndarray) -> np.ndarray:
        if _bindings_ready.is_set():
            return infer(batch)
        with _first_call:  # see _bindings_ready
            vectors = infer(batch)
            _bindings_ready.set()
        return vectors

    return run


#: Set once a call has run in this process. The first calls made at once from two threads
#: could hang both for good (a server whose first two requests came together): OpenVINO's
#: bindings set up their NumPy API once per process, in a C++ static initialiser that waits
#: for the GIL while the other thread, holding the GIL, waits for that initialiser. So the
#: first call runs alone (``_first_call``); every later one is free.
_bindings_ready = threading.Event()
_first_call = threading.Lock()


def load_saved(spec: ModelSpec, root: Path, weights_fingerprint: str, precision: str, threads: int) -> Embedder | None:
    """``spec``'s embedder from its saved graph, or None when none is saved yet."""
    model = read(graph_path(root, spec.name, precision, weights_fingerprint))
    if model is None:
        return None
    backend = "openvino" if precision == DEFAULT_PRECISION else f"openvino {precision}"
    return Embedder(spec.name, _dim(model), spec.preprocess(), runner(model, precision, threads), backend)


def saved_dim(spec: ModelSpec, root: Path, weights_fingerprint: str, precision: str) -> int | None:
    """The vectors' size from ``spec``'s saved graph, without compiling it (~0.03 s against
    0.3-0.9 s for ``clip`` on 2 cores), or None when none is saved yet."""
    model = read(graph_path(root, spec.name, precision, weights_fingerprint))
    return None if model is None else _dim(model)


def _dim(model) -> int:
    """The graph's output size, as the checkpoint's shapes made it."""
    return model.output(0).get_partial_shape()[1].get_length()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"
