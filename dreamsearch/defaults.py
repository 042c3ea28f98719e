"""Defaults that both the command line and the library use, in a module light enough for
``dreamsearch --help`` to import."""

import os

#: IVF lists searched per query (docs/index-policy.md: recall@25 1.000 on clustered data).
DEFAULT_NPROBE = 16

#: Larger pictures are refused as decompression bombs.
DEFAULT_MAX_PIXELS = 200_000_000

#: The pixel baselines ``eval nights -m`` takes besides models (``evaluation.pixel_metrics``).
PIXEL_METRICS = ("psnr", "ssim")


def usable_cores() -> int:
    """CPU cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
