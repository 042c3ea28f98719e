"""Which FAISS index a collection of a given size gets, as a factory string.

Thresholds come from ``benchmarks/ann.py`` on this project's 2-core machine; the measured
table is in ``docs/index-policy.md``. All indexes use inner product on unit vectors, which
equals cosine similarity, so DreamSim distance is ``1 - score``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dreamsearch.defaults import DEFAULT_NPROBE

#: Up to this many vectors, exact search stays under ~15 ms even at 1792-d (measured:
#: 71 ms at 100k x 1792 and 24 ms at 100k x 768, linear in N); above it IVF answers in
#: about 1 ms with recall@25 of 1.000 on clustered data (docs/index-policy.md).
FLAT_MAX = 20_000
#: Up to this many, IVF with full vectors; above, PQ codes plus exact re-ranking.
IVF_FLAT_MAX = 2_000_000
RERANK_FACTOR = 4
#: k-means wants at least this many training points per centroid (FAISS warns below 39).
TRAIN_POINTS_PER_LIST = 39
#: ...and at most this many (FAISS's default is 256): k-means costs points x lists x dim per
#: iteration, and 50 keeps training for 1M vectors to minutes on 2 cores.
MAX_TRAIN_POINTS_PER_LIST = 50


@dataclass(frozen=True)
class IndexPlan:
    """``kind`` is ``flat``, ``ivf`` or ``ivfpq``; ``rerank`` > 0 means: fetch
    ``rerank · k`` candidates and order them by exact scores from stored vectors."""

    kind: str
    factory: str
    nlist: int = 0
    nprobe: int = 0
    rerank: int = 0

    @property
    def needs_training(self) -> bool:
        return self.kind != "flat"


def nlist_for(n: int) -> int:
    """A power of two near 4·√n, and small enough to train on the data at hand."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 1 << max(0, round(math.log2(target)))
    while nlist > 1 and nlist * TRAIN_POINTS_PER_LIST > n:
        nlist //= 2
    return nlist


def pq_subquantizers(dim: int) -> int:
    """8 dimensions per 8-bit code: 96 bytes for 768-d, 224 for 1792-d."""
    for m in (dim // 8, dim // 4, dim // 2, dim):
        if m and dim % m == 0:
            return m
    return dim


def plan_for(n: int, dim: int, nprobe: int = DEFAULT_NPROBE) -> IndexPlan:
    """The index for ``n`` vectors of ``dim`` values."""
    kind = "flat" if n <= FLAT_MAX else "ivf" if n <= IVF_FLAT_MAX else "ivfpq"
    return with_kind(kind, n, dim, nprobe)


def with_kind(kind: str, n: int, dim: int, nprobe: int = DEFAULT_NPROBE) -> IndexPlan:
    """The plan of ``kind`` for ``n`` vectors, whatever the size thresholds say (tests and
    benchmarks compare kinds on the same data)."""
    if kind == "flat":
        return IndexPlan("flat", "IDMap2,Flat")
    nlist = nlist_for(n)
    probes = min(nprobe, nlist)
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{nlist},Flat", nlist, probes)
    if kind == "ivfpq":
        return IndexPlan("ivfpq", f"IVF{nlist},PQ{pq_subquantizers(dim)}", nlist, probes, RERANK_FACTOR)
    raise ValueError(f"unknown index kind '{kind}'")
