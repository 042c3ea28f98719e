"""Groups of duplicate images over a whole library, in memory that grows with N, never N².

Two tiers:
- ``identical``: the same bytes at several paths (same content hash). Always reported,
  whatever the model.
- ``similar``: contents whose vectors lie within ``max_distance`` of each other. Every
  vector asks the model's FAISS index for its ``neighbours`` nearest, a chunk of queries
  at a time; pairs within the distance are joined with union-find, so a group is a
  connected component (A~B and B~C put A, B and C together). Memory: the index, one chunk
  of queries and answers, and one int per vector.

Each group names a keeper, the file to keep: the most pixels, then the oldest (mtime),
then the first path. See docs/duplicates.md for the default distances.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dreamsearch.catalog import Catalog, FileDetail, ModelInfo
from dreamsearch.vector_index.index import VectorIndex

NEIGHBOURS = 16
QUERY_CHUNK = 4096


@dataclass(frozen=True)
class DuplicateFile:
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    mtime_ns: int
    #: Distance to the keeper (0 for the keeper and its byte-identical copies).
    distance: float


@dataclass(frozen=True)
class DuplicateGroup:
    kind: str  # "identical" or "similar"
    keeper: DuplicateFile
    others: tuple[DuplicateFile, ...]

    @property
    def files(self) -> tuple[DuplicateFile, ...]:
        return (self.keeper, *self.others)


def find_duplicates(catalog: Catalog, model: ModelInfo, index: VectorIndex, max_distance: float,
                    neighbours: int = NEIGHBOURS) -> list[DuplicateGroup]:
    """Both tiers: identical groups first, then similar ones; larger groups first in each."""
    return identical_groups(catalog) + similar_groups(catalog, model, index, max_distance, neighbours)


def identical_groups(catalog: Catalog) -> list[DuplicateGroup]:
    """Byte-identical copies: one group per content found at more than one path."""
    files = catalog.file_details(catalog.shared_contents())
    return _ordered([_group("identical", [(f, 0.0) for f in same]) for same in files.values() if len(same) > 1])


def similar_groups(catalog: Catalog, model: ModelInfo, index: VectorIndex, max_distance: float,
                   neighbours: int = NEIGHBOURS) -> list[DuplicateGroup]:
    """Contents within ``max_distance`` of each other (transitively), grouped."""
    ids = catalog.vector_ids(model)
    ids.sort()
    parent = np.arange(len(ids))
    fetch = (lambda wanted: catalog.vectors_for(model, wanted)) if index.plan.rerank else None
    for chunk_ids, vectors in catalog.iter_vectors(model, chunk=QUERY_CHUNK):
        scores, found = index.search(vectors, neighbours + 1, fetch=fetch)
        close = (found >= 0) & (found != chunk_ids[:, None]) & (1.0 - scores <= max_distance)
        rows, cols = np.nonzero(close)
        if not len(rows):
            continue
        (a, known_a), (b, known_b) = _positions(ids, chunk_ids[rows]), _positions(ids, found[rows, cols])
        known = known_a & known_b  # vectors committed after the ``ids`` snapshot wait for the next run
        for x, y in zip(a[known].tolist(), b[known].tolist()):
            _union(parent, x, y)
    groups = (_similar_group(catalog, model, ids[members]) for members in _components(parent))
    return _ordered([g for g in groups if g is not None])


def _similar_group(catalog: Catalog, model: ModelInfo, content_ids: np.ndarray) -> DuplicateGroup | None:
    files = catalog.file_details(content_ids)
    found_ids, vectors = catalog.vectors_for(model, list(files))
    if len(found_ids) < 2:
        return None  # removed since the snapshot
    by_content = dict(zip(found_ids.tolist(), vectors))
    keeper_content, _keeper = min(((cid, f) for cid in by_content for f in files[cid]), key=lambda cf: _keeper_key(cf[1]))
    anchor = by_content[keeper_content]
    return _group("similar", [(f, max(0.0, 1.0 - float(by_content[cid] @ anchor)))
                              for cid in by_content for f in files[cid]])


def _group(kind: str, files: list[tuple[FileDetail, float]]) -> DuplicateGroup:
    ordered = sorted(files, key=lambda fd: _keeper_key(fd[0]))
    keeper, others = ordered[0], sorted(ordered[1:], key=lambda fd: (fd[1], fd[0].path))
    as_files = [DuplicateFile(f.id, f.path, f.size, f.width, f.height, f.mtime_ns, d) for f, d in (keeper, *others)]
    return DuplicateGroup(kind, as_files[0], tuple(as_files[1:]))


def _keeper_key(detail: FileDetail) -> tuple:
    """Most pixels first, then oldest, then by path (so the choice is stable)."""
    return (-((detail.width or 0) * (detail.height or 0)), detail.mtime_ns, detail.path)


def _ordered(groups: list[DuplicateGroup]) -> list[DuplicateGroup]:
    return sorted(groups, key=lambda g: (-len(g.files), g.keeper.path))


def _positions(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``wanted`` sits in the sorted ``ids``, and whether it is there at all."""
    at = np.minimum(np.searchsorted(ids, wanted), max(len(ids) - 1, 0))
    return at, (ids[at] == wanted) if len(ids) else np.zeros(len(wanted), bool)


def _union(parent: np.ndarray, x: int, y: int) -> None:
    rx, ry = _find(parent, x), _find(parent, y)
    if rx != ry:
        parent[max(rx, ry)] = min(rx, ry)


def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        parent[x], x = root, parent[x]
    return int(root)


def _components(parent: np.ndarray) -> Iterator[np.ndarray]:
    """Positions of every component with more than one member."""
    roots = parent.copy()
    while not np.array_equal(jumped := roots[roots], roots):  # pointer jumping to the roots
        roots = jumped
    order = np.argsort(roots, kind="stable")
    boundaries = np.flatnonzero(np.diff(roots[order])) + 1
    for members in np.split(order, boundaries):
        if len(members) > 1:
            yield members

