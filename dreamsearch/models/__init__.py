"""Embedders: DreamSim variants and baselines, chosen by name from the registry."""

from __future__ import annotations

import importlib
import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from dreamsearch.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.base import Embedder


class PendingModel:
    """A model ready to build: its weights are present and fingerprinted, and nothing heavy
    is imported yet. The indexer knows what it needs from it (name, weights, input recipe)
    and calls ``load`` only when a file needs embedding (or the library has never seen the
    model), so a run that finds nothing new, or only copies and moves, starts at once."""

    def __init__(self, name: str = DEFAULT_MODEL, weights_dir: str | os.PathLike | None = None,
                 device: str = "auto", allow_download: bool = True, compile: bool = False) -> None:
        from dreamsearch.models.weights import ensure_weights, fingerprint, weights_dir as resolve_weights_dir

        self.spec = get_spec(name)
        self.root = ensure_weights(self.spec, resolve_weights_dir(weights_dir), allow_download)
        self.name = self.spec.name
        self.fingerprint = fingerprint(self.spec, self.root)
        self.preprocess_spec = self.spec.preprocess()
        self.device, self.compile = device, compile
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    @cached_property
    def legacy_fingerprint(self) -> str:
        """What a library made before whole-file fingerprints stored for these weights
        (computed on demand: only such a library asks for it)."""
        from dreamsearch.models.weights import legacy_fingerprint

        return legacy_fingerprint(self.spec, self.root)

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def load(self) -> "Embedder":
        """Build the embedder once (thread-safe) and keep it."""
        with self._lock:
            if self._embedder is None:
                from dreamsearch.models.base import resolve_device
                from dreamsearch.models.openvino_backend import attach

                module_name, function = self.spec.builder.split(":")
                builder = getattr(importlib.import_module(module_name), function)
                embedder = builder(self.spec, self.root, resolve_device(self.device))
                embedder.compile = self.compile
                embedder.fingerprint = self.fingerprint
                embedder.legacy_fingerprint = self.legacy_fingerprint
                attach(embedder, self.root, self.fingerprint)
                self._embedder = embedder
            return self._embedder


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
    return PendingModel(name, weights_dir, device, allow_download, compile).load()


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "PendingModel", "get_spec", "load_model"]
