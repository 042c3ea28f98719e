"""Pictures for tests and benchmarks: photo-like images, so JPEG coding and resampling
behave as on real photos (importable without conftest's side effects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture with some texture, so JPEG coding behaves as on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(127 + 100 * np.sin(fx * x + fy * y + phase))
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def photo_folder(folder: Path, count: int, size: tuple[int, int], seed: int, name: str,
                 start: int = 0, **save) -> Path:
    """Photos ``name.format(i)`` for i in ``start .. start + count - 1``, each distinct
    (seed ``seed + i``); ``save`` goes to PIL (``quality=90``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        photo_like(*size, seed + i).save(folder / name.format(i), **save)
    return folder
