"""Recall of an approximate index against exact search, and synthetic data to measure it
on; shared by the tests and ``benchmarks/ann.py``."""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(n: int, dim: int, centres: int, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``centres`` random directions (photo collections cluster:
    trips, pets, documents), float32 ``[n, dim]``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        picks = rng.integers(0, centres, stop - start)
        noise = rng.normal(scale=spread / np.sqrt(dim), size=(stop - start, dim)).astype(np.float32)
        block = means[picks] + noise
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top ``k`` ids that ``found`` (``[q, >=k]``) holds."""
    hits = sum(len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)
