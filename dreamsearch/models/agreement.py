"""How closely a faster way of computing a model's vectors (OpenVINO, int8) agrees with
float32 torch on the same pictures: the gates ``--precision int8`` must pass.

The gates are on what a user sees, not only on each vector: a result list (distances,
duplicate decisions, the top 10) can change even when every vector is close. A pair the
float32 model itself places within the allowed distance change (0.01) of the duplicate
distance may fall either side without breaking a gate; such pairs are counted apart
(random weights put many there; real ones, few). They were
set from research on ViT-B branches (docs/models.md#int8): per-tensor int8 activations
reached cosine 0.88-0.96 and static int8 a distance change of 0.048, too close to the
duplicate threshold; both must fail here. ``dreamsearch models check`` runs them on the
user's own photos with their real weights (random weights have no outlier activations,
so only that run confirms the gates on real ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

Embed = Callable[[np.ndarray], np.ndarray]

#: Pictures the gates need at least: the top 10 of each among the others, and enough
#: pairs that one disagreement in duplicate decisions shows.
MIN_PICTURES = 40
#: Reference distances this close to a query's 10th count as tied with it.
TIE = 1e-3


@dataclass(frozen=True)
class Gate:
    """A bound on one measure: ``at_least`` a lower bound, else an upper one."""

    bound: float
    at_least: bool
    label: str

    def holds(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.bound:g}"


GATES = {
    "cosine_min": Gate(0.995, True, "cosine with float32, lowest"),
    "cosine_mean": Gate(0.999, True, "cosine with float32, mean"),
    "distance_change": Gate(0.01, False, "distance change between pictures, largest"),
    "duplicate_flips": Gate(0, False, "pairs clear of the duplicate distance judged differently"),
    "top10": Gate(0.98, True, "top 10 shared with float32 (ties allowed)"),
    "batch_invariance": Gate(0.99999, True, "cosine alone vs in a batch, lowest"),
}


@dataclass(frozen=True)
class Agreement:
    """The measures of :data:`GATES`, on ``pictures`` pictures."""

    pictures: int
    cosine_min: float
    cosine_mean: float
    distance_change: float
    duplicate_flips: int
    top10: float
    batch_invariance: float
    #: Pairs whose float32 distance is within the allowed distance change of the
    #: duplicate distance: either decision is within the gates, so they are only counted.
    borderline_pairs: int

    def failures(self) -> list[str]:
        """One line per gate that does not hold (none: the candidate may be used)."""
        return [
            f"{GATES[f.name].label}: {getattr(self, f.name):.6g} (needs {GATES[f.name].describe()})"
            for f in fields(self)
            if f.name in GATES and not GATES[f.name].holds(getattr(self, f.name))
        ]


#: Pictures embedded one at a time for the batch-invariance gate (it is per picture:
#: more would only cost time).
ALONE = 16


def in_batches(embed: Embed, pixels: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """``embed`` on ``pixels`` in batches of ``batch_size``, as the indexer calls a model."""
    vectors = [embed(pixels[start : start + batch_size]) for start in range(0, len(pixels), batch_size)]
    return np.concatenate(vectors).astype(np.float64)


def measure(
    expected: np.ndarray, candidate: Embed, pixels: np.ndarray, duplicate_distance: float, batch_size: int = 16
) -> Agreement:
    """Compare ``candidate`` on ``pixels`` (``uint8 [N, S, S, 3]``, N >= :data:`MIN_PICTURES`)
    with the reference's vectors of them, ``expected`` (:func:`in_batches`)."""
    if len(pixels) < MIN_PICTURES:
        raise ValueError(f"the gates need at least {MIN_PICTURES} pictures, not {len(pixels)}")
    got = in_batches(candidate, pixels, batch_size)
    alone = np.concatenate([candidate(pixels[i : i + 1]) for i in range(min(ALONE, len(pixels)))])
    cosine = np.sum(expected * got, axis=1)
    d_expected, d_got = _distances(expected), _distances(got)
    pairs = np.triu_indices(len(pixels), k=1)
    flips = (d_expected[pairs] <= duplicate_distance) != (d_got[pairs] <= duplicate_distance)
    borderline = np.abs(d_expected[pairs] - duplicate_distance) <= GATES["distance_change"].bound
    return Agreement(
        pictures=len(pixels),
        cosine_min=float(cosine.min()),
        cosine_mean=float(cosine.mean()),
        distance_change=float(np.abs(d_got - d_expected)[pairs].max()),
        duplicate_flips=int((flips & ~borderline).sum()),
        top10=_top10(d_expected, d_got),
        batch_invariance=float(np.sum(alone * got[: len(alone)], axis=1).min()),
        borderline_pairs=int(borderline.sum()),
    )


def _distances(vectors: np.ndarray) -> np.ndarray:
    """1 - cosine between every two pictures (vectors are unit norm)."""
    return 1.0 - vectors @ vectors.T


def _top10(d_expected: np.ndarray, d_got: np.ndarray) -> float:
    """Mean share of each picture's 10 nearest others under the candidate that are among
    its 10 nearest under the reference, a reference distance within :data:`TIE` of the
    10th counting as among them (pictures equally near may come in either order)."""
    n = len(d_expected)
    others = ~np.eye(n, dtype=bool)
    shares = []
    for i in range(n):
        reference_row, candidate_row = d_expected[i][others[i]], d_got[i][others[i]]
        tenth = np.sort(reference_row)[9]
        chosen = np.argsort(candidate_row, kind="stable")[:10]
        shares.append(np.mean(reference_row[chosen] <= tenth + TIE))
    return float(np.mean(shares))
