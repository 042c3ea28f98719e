"""Embedders built from a torch network, and the device plumbing they share."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dreamsearch.errors import DreamsearchError
from dreamsearch.images import Preprocess
from dreamsearch.models.embedder import Embedder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Normalized(torch.nn.Module):
    """``network`` fed ``(x - mean) / std``, computed on the device (written exactly as
    torchvision's ``Normalize`` so results match the reference implementations)."""

    mean: torch.Tensor  # buffers, registered below
    std: torch.Tensor

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


class TorchEmbedder(Embedder):
    """An :class:`Embedder` whose runner is a torch ``network`` on ``device``: scaling to
    [0, 1] and per-model normalisation happen inside the network, on the device."""

    def __init__(
        self,
        name: str,
        network: torch.nn.Module,
        dim: int,
        preprocess: Preprocess,
        device: torch.device,
        autocast: bool = True,
    ) -> None:
        super().__init__(name, dim, preprocess, self._torch_run, "torch")
        self.device: torch.device = device
        self.network = network.eval().requires_grad_(False).to(device)
        self.autocast_dtype = _autocast_dtype(device) if autocast else None
        self.compile = False  # see _run; load_model(compile=True) turns it on
        self._compiled: tuple[int, Callable] | None = None

    def _torch_run(self, batch: np.ndarray) -> np.ndarray:
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
                warnings.warn(f"torch.compile failed, running uncompiled: {exc}".splitlines()[0], stacklevel=1)
                self.compile, self._compiled = False, None
        return self.network(x)

    def __repr__(self) -> str:
        return f"<Embedder {self.name} dim={self.dim} on {self.device} ({self.backend})>"


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 (or fp16) autocast on CUDA only: on CPUs without native bf16 it is ~6× slower."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
