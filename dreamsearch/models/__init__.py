"""Embedders: DreamSim variants and baselines, chosen by name from the registry."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from dreamsearch.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.base import Embedder


def load_model(
    name: str = DEFAULT_MODEL,
    weights_dir: str | os.PathLike | None = None,
    device: str = "auto",
    allow_download: bool = True,
    compile: bool = False,
) -> "Embedder":
    """Build the embedder ``name`` with its weights from ``weights_dir`` (downloading
    missing files when the network allows). Raises :class:`~dreamsearch.errors.WeightsError`
    with instructions when weights are missing offline. ``compile`` trades a one-off
    15-60 s compilation for 10-35% more images/s on CPU (worth it for long runs)."""
    from dreamsearch.models.base import resolve_device
    from dreamsearch.models.weights import ensure_weights, fingerprint, weights_dir as resolve_weights_dir

    spec = get_spec(name)
    root = ensure_weights(spec, resolve_weights_dir(weights_dir), allow_download)
    module_name, function = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), function)
    embedder = builder(spec, root, resolve_device(device))
    embedder.compile = compile
    embedder.fingerprint = fingerprint(spec, root)
    return embedder


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "get_spec", "load_model"]
