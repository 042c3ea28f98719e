"""``--precision``: float32 (the official numbers) or int8 (opt-in, about 2x faster on a CPU).

int8 means OpenVINO with int8 weights (per output channel, NNCF's ``compress_weights``) and
activations quantised as each call runs, per token in groups of 128 channels (the CPU
plugin's dynamic quantisation). Per-tensor activation scales collapse to cosine 0.88-0.96
once a network's activations have outlier channels; per-token groups keep an outlier's
damage inside its own group (docs/models.md#int8 has the gates and figures).

int8 vectors are not the official ones, so they carry their own fingerprint (the weights'
with ``+int8``): the catalog never puts them in an index with float32 vectors of the same
weights. Nothing here imports torch or OpenVINO: the CLI checks an option before anything heavy loads.
"""

from __future__ import annotations

import importlib.util
import os

from dreamsearch.errors import DreamsearchError

ENV = "DREAMSEARCH_BACKEND"
PRECISIONS = ("fp32", "int8")
DEFAULT_PRECISION = "fp32"
_SEPARATOR = "+"


def chosen_backend() -> str:
    """``torch`` or ``openvino``: what ``DREAMSEARCH_BACKEND`` asks for, else OpenVINO when installed.

    An environment variable rather than an option: models are built by the CLI, the server,
    the Python API and Ray workers alike, and each reads it the same way."""
    wanted = os.environ.get(ENV, "").strip().lower()
    installed = importlib.util.find_spec("openvino") is not None
    if wanted in ("", "auto"):
        return "openvino" if installed else "torch"
    if wanted not in ("torch", "openvino"):
        raise DreamsearchError(f"{ENV}={wanted!r} is not a backend (use torch or openvino)")
    if wanted == "openvino" and not installed:
        raise DreamsearchError(f"{ENV}=openvino, but openvino is not installed (pip install 'dreamsearch[openvino]')")
    return wanted


def with_precision(fingerprint: str, precision: str) -> str:
    """The fingerprint of vectors made at ``precision`` from the weights ``fingerprint``."""
    return fingerprint if precision == DEFAULT_PRECISION else f"{fingerprint}{_SEPARATOR}{precision}"


def precision_of(fingerprint: str) -> str:
    """The precision whose vectors carry ``fingerprint`` (see :func:`with_precision`)."""
    head, separator, tail = fingerprint.rpartition(_SEPARATOR)
    return tail if separator and tail in PRECISIONS else DEFAULT_PRECISION


def check_precision(precision: str, device: str) -> None:
    """Refuse, in one line and before torch is imported, a precision this install or
    device cannot run."""
    if precision not in PRECISIONS:
        raise DreamsearchError(f"unknown precision '{precision}' (use {' or '.join(PRECISIONS)})")
    if precision == DEFAULT_PRECISION:
        return
    if device.startswith("cuda"):
        raise DreamsearchError("--precision int8 runs on the CPU (through OpenVINO); use --device cpu or auto")
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        raise DreamsearchError(f"--precision int8 needs {' and '.join(missing)}: pip install 'dreamsearch[int8]'")
    if chosen_backend() != "openvino":
        raise DreamsearchError("--precision int8 runs through OpenVINO, but DREAMSEARCH_BACKEND=torch turns it off")
