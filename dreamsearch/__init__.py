"""dreamsearch: reverse image search over photo folders with DreamSim embeddings.

Heavy dependencies (torch, open_clip, faiss) are imported only by the functions that need
them, so importing this package and running ``dreamsearch --help`` stays fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dreamsearch.models.registry import DEFAULT_MODEL

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep rather than spin (libgomp spins by default), read
# once when torch or faiss starts OpenMP, so it is set before either is imported. Spinning
# threads take the cores the working ones need on a busy machine: one image took 1.6-1.9
# CPU s and 12-16 s wall under load, 0.27-0.36 CPU s passive (issue 23;
# benchmarks/omp_wait_policy.py). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.api import Library
    from dreamsearch.models.embedder import Embedder


def load_model(name: str = DEFAULT_MODEL, **kwargs) -> Embedder:
    """Build the embedder registered as ``name``; see :func:`dreamsearch.models.load_model`."""
    from dreamsearch.models import load_model as _load_model

    return _load_model(name, **kwargs)


def __getattr__(name: str):
    """``from dreamsearch import Library`` without importing torch for ``--help``."""
    if name in ("DuplicateGroup", "Library", "Match"):
        from dreamsearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'dreamsearch' has no attribute {name!r}")


__all__ = ["DuplicateGroup", "Library", "Match", "__version__", "load_model"]
