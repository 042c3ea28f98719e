"""dreamsearch: reverse image search over photo folders with DreamSim embeddings.

Heavy dependencies (torch, open_clip, faiss) are imported only by the functions that need
them, so importing this package and running ``dreamsearch --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dreamsearch.models.registry import DEFAULT_MODEL

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.api import Library
    from dreamsearch.models.base import Embedder


def load_model(name: str = DEFAULT_MODEL, **kwargs) -> "Embedder":
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
