"""The classic pixel baselines of the DreamSim paper as distances: ``psnr`` (distance
``−PSNR``) and ``ssim`` (distance ``1 − SSIM``), computed with scikit-image.

Both compare 8-bit RGB pixels decoded like everything else (EXIF, alpha on white). A
distortion whose size differs from its reference is resized to it (bicubic) first; NIGHTS
triplets share one size. SSIM uses Wang et al.'s settings: Gaussian window σ = 1.5,
population covariance, per colour channel, averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from dreamsearch.errors import ImageError
from dreamsearch.evaluation.nights import Triplet
from dreamsearch.images import decode


def psnr_distance(reference: np.ndarray, image: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(reference, image):
        return -float("inf")
    return -float(peak_signal_noise_ratio(reference, image, data_range=255))


def ssim_distance(reference: np.ndarray, image: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    similarity = structural_similarity(
        reference, image, data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return 1.0 - float(similarity)


def pixel_distances(
    folder: Path, metric: str, report: Callable[[str], None]
) -> Callable[[Triplet], tuple[float, float] | None]:
    """``distances(triplet)`` for ``evaluate``; unreadable images are reported once each."""
    distance = {"psnr": psnr_distance, "ssim": ssim_distance}[metric]

    @lru_cache(maxsize=64)
    def pixels(relpath: str) -> np.ndarray | None:
        try:
            return np.asarray(decode(Path(folder) / relpath).image)
        except ImageError as exc:
            report(str(exc))
            return None

    def distances(t: Triplet) -> tuple[float, float] | None:
        ref, left, right = pixels(t.ref), pixels(t.left), pixels(t.right)
        if ref is None or left is None or right is None:
            return None
        try:
            return distance(ref, _same_size(left, ref)), distance(ref, _same_size(right, ref))
        except ValueError as exc:  # e.g. smaller than SSIM's 7x7 window
            report(f"{Path(folder) / t.ref}: {metric} cannot compare this triplet ({exc})")
            return None

    return distances


def _same_size(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    if image.shape == reference.shape:
        return image
    height, width = reference.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
