"""The one interface every embedder offers, and the device plumbing they share."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dreamsearch.errors import DreamsearchError
from dreamsearch.images import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Normalized(torch.nn.Module):
    """``network`` fed ``(x - mean) / std``, computed on the device (written exactly as
    torchvision's ``Normalize`` so results match the reference implementations)."""

    def __init__(self, network: torch.nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - self.mean) / self.std)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DreamsearchError("--device cuda was asked for, but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise DreamsearchError(f"unknown device '{device}' (use auto, cpu or cuda)")
    return torch.device(device)


def set_threads(threads: int | None) -> None:
    """Cap torch's intra-op threads; oversubscribing the cores slows inference badly."""
    if threads:
        torch.set_num_threads(threads)


def _one_thread_after_fork() -> None:
    """A child forked after torch ran in parallel hangs in its first parallel operation
    (its OpenMP pool's threads stayed in the parent): it runs on one thread instead."""
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


class Embedder:
    """Images in, unit-norm float32 vectors out.

    ``preprocess`` turns a decoded RGB picture into ``uint8 [S, S, 3]`` (cheap to send
    between processes); ``embed`` takes a stack of those and returns ``float32 [B, dim]``
    with unit L2 norm, so cosine similarity is a plain inner product. Scaling to [0, 1] and
    per-model normalisation happen inside ``network`` on the device.
    """

    def __init__(
        self,
        name: str,
        network: torch.nn.Module,
        dim: int,
        preprocess: Preprocess,
        device: torch.device,
        autocast: bool = True,
    ) -> None:
        self.name = name
        self.dim = dim
        self.device = device
        self.network = network.eval().requires_grad_(False).to(device)
        self.preprocess_spec = preprocess
        self.fingerprint = ""  # identifies the weights; set by load_model
        self.legacy_fingerprint = ""  # how older libraries name them; set by load_model
        self.autocast_dtype = _autocast_dtype(device) if autocast else None
        self.compile = False  # see _run; load_model(compile=True) turns it on
        self._compiled: tuple[int, Callable] | None = None
        # what ``embed`` runs on; openvino_backend.attach swaps in OpenVINO on a CPU
        self.backend = "torch"
        self.runner: Callable[[np.ndarray], np.ndarray] | None = None

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocess_spec(image)

    def load(self) -> Embedder:
        """Already loaded (the indexer also takes ``PendingModel`` handles)."""
        return self

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """``uint8 [B, S, S, 3]`` → ``float32 [B, dim]``, unit norm."""
        if self.runner is not None:
            return self.runner(batch)
        pixels = torch.from_numpy(np.require(batch, requirements=["C", "W"]))  # copies only read-only input
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            x = pixels.permute(0, 3, 1, 2).float().div(255)
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    features = self._run(x)
            else:
                features = self._run(x)
            vectors = F.normalize(features.float(), dim=-1)
        return vectors.cpu().numpy()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The network, compiled for the first batch size seen when ``compile`` is set.

        Compiling (inductor, weights frozen and pre-packed) costs 15-60 s once, then runs
        10-35% faster on CPU with results equal to ~1e-7. Other batch sizes (a run's last,
        partial batch) use the eager network rather than trigger another compilation."""
        if self.compile and self._compiled is None:
            self._compiled = (x.shape[0], torch.compile(self.network, dynamic=False, options={"freezing": True}))
        if self._compiled is not None and self._compiled[0] == x.shape[0]:
            try:
                return self._compiled[1](x)
            except Exception as exc:  # no C compiler, unsupported platform, ...
                warnings.warn(f"torch.compile failed, running uncompiled: {exc}".splitlines()[0])
                self.compile, self._compiled = False, None
        return self.network(x)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed RGB PIL images in order, ``batch_size`` at a time."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out[start : start + len(chunk)] = self.embed(np.stack([self.preprocess(i) for i in chunk]))
        return out

    def __repr__(self) -> str:
        return f"<Embedder {self.name} dim={self.dim} on {self.device} ({self.backend})>"


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 (or fp16) autocast on CUDA only: on CPUs without native bf16 it is ~6× slower."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
