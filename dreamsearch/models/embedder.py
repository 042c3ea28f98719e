"""The one interface every embedder offers, without torch: a model read back from its
saved OpenVINO graph runs through it alone (``saved_graph``), and the torch models
(``base.TorchEmbedder``) plug their network in as its ``runner``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dreamsearch.images import Preprocess

if TYPE_CHECKING:  # pragma: no cover
    import torch

Runner = Callable[[np.ndarray], np.ndarray]


class Embedder:
    """Images in, unit-norm float32 vectors out.

    ``preprocess`` turns a decoded RGB picture into ``uint8 [S, S, 3]`` (cheap to send
    between processes); ``embed`` takes a stack of those and returns ``float32 [B, dim]``
    with unit L2 norm, so cosine similarity is a plain inner product. ``runner`` does that
    arithmetic: a torch network, or a compiled OpenVINO graph (``backend`` says which).
    """

    #: Where ``runner`` computes: a saved graph on the CPU; ``TorchEmbedder`` sets its device.
    device: str | torch.device = "cpu"
    #: None: a loaded embedder is not built again elsewhere (``indexer.ModelSource``).
    weights_root: Path | None = None

    def __init__(self, name: str, dim: int, preprocess: Preprocess, runner: Runner, backend: str) -> None:
        self.name = name
        self.dim = dim
        self.preprocess_spec = preprocess
        self.runner = runner
        self.backend = backend
        self.fingerprint = ""  # identifies the weights (and an int8 precision); set by PendingModel
        self.legacy_fingerprint = ""  # how older libraries name the weights; set by PendingModel

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocess_spec(image)

    def load(self) -> Embedder:
        """Already loaded (the indexer also takes a ``PendingModel``)."""
        return self

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """``uint8 [B, S, S, 3]`` → ``float32 [B, dim]``, unit norm."""
        return self.runner(batch)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed RGB PIL images in order, ``batch_size`` at a time."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out[start : start + len(chunk)] = self.embed(np.stack([self.preprocess(i) for i in chunk]))
        return out

    def __repr__(self) -> str:
        return f"<Embedder {self.name} dim={self.dim} ({self.backend})>"
