"""The same query through several models (the "bowl of ramen" demo), and how much their
top-k lists agree.

Agreement of two top-k lists A and B:
- Jaccard: ``|A ∩ B| / |A ∪ B|`` over the result files.
- Rank correlation: Spearman's rho over ``A ∪ B``, a file missing from one list counting
  as rank ``k + 1`` there (Fagin, Kumar and Sivakumar's treatment of top-k lists), so
  both which files and in what order count. ``None`` when it is undefined (fewer than two
  files, or a list without any spread of ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from dreamsearch.search import Match


@dataclass(frozen=True)
class Overlap:
    models: tuple[str, str]
    common: int
    jaccard: float
    rank_correlation: float | None


def overlaps(results: dict[str, list[Match]], k: int) -> list[Overlap]:
    """Agreement of every pair of models' lists (see the module docstring)."""
    return [_overlap(a, b, results[a], results[b], k) for a, b in combinations(results, 2)]


def _overlap(name_a: str, name_b: str, a: list[Match], b: list[Match], k: int) -> Overlap:
    ranks_a = {m.path: m.rank for m in a}
    ranks_b = {m.path: m.rank for m in b}
    union = sorted(ranks_a.keys() | ranks_b.keys())
    common = len(ranks_a.keys() & ranks_b.keys())
    jaccard = common / len(union) if union else 1.0
    return Overlap(
        (name_a, name_b),
        common,
        jaccard,
        spearman([ranks_a.get(p, k + 1) for p in union], [ranks_b.get(p, k + 1) for p in union]),
    )


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the (tie-averaged) ranks."""
    if len(x) < 2:
        return None
    rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    _unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]
