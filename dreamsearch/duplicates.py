"""Groups of duplicate images over a whole library, in memory that grows with N, never N².

Two tiers:
- ``identical``: the same bytes at several paths (same content hash). Always reported,
  whatever the model.
- ``similar``: contents within ``max_distance`` of a keeper. Every vector asks the model's
  FAISS index for its ``neighbours`` nearest, a chunk of queries at a time, and the pairs
  within the distance are kept. Then, in keeper order, each content not yet in a group
  takes its neighbours not yet in one, nearest first, each only if it is within the
  distance of every member taken before it (complete linkage). So every two files of a
  group are within the distance (no chaining: A~B and B~C never put A with C), the keeper
  is the best file of its group, and a content is in at most one group. A content is one item
  here, shown by its best file: its byte-identical copies are in its identical group, so
  no file is counted twice. Memory: the index, one chunk of queries and answers, and the
  close pairs.

Each group names a keeper, the file to keep: the most pixels, then the oldest (mtime),
then the first path. A file reachable by several paths (hard links, a bind mount, a
followed symlink) is one file: it is never a copy of itself, it is shown by the name
that needs no symlink, and its other names are listed as ``links`` (``file_state``). See
docs/duplicates.md for the default distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dreamsearch.catalog import Catalog, FileDetail, ModelInfo
from dreamsearch.file_state import one_name_per_file
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
    #: Distance to the keeper (0 for the keeper and in an identical group).
    distance: float
    #: Other paths of this same file on disk (hard links, bind mounts, followed symlinks):
    #: removing one of them frees nothing.
    links: tuple[str, ...] = ()
    #: The file on disk (device and inode): what the bytes freed are counted by.
    file_key: tuple = field(default=(), repr=False, compare=False)

    @property
    def dimensions(self) -> str:
        """``800x600``, or ``?`` when the pixels are not known."""
        return f"{self.width}x{self.height}" if self.width and self.height else "?"


@dataclass(frozen=True)
class DuplicateGroup:
    kind: str  # "identical" or "similar"
    keeper: DuplicateFile
    others: tuple[DuplicateFile, ...]

    @property
    def files(self) -> tuple[DuplicateFile, ...]:
        return (self.keeper, *self.others)


@dataclass(frozen=True)
class DuplicateSummary:
    """What could go if every group were acted on: each file counted once, keepers kept."""

    identical_groups: int
    similar_groups: int
    removable_files: int
    removable_bytes: int


def find_duplicates(
    catalog: Catalog, info: ModelInfo, index: VectorIndex, max_distance: float, neighbours: int = NEIGHBOURS
) -> list[DuplicateGroup]:
    """Both tiers: identical groups first, then similar ones; larger groups first in each."""
    return identical_groups(catalog) + similar_groups(catalog, info, index, max_distance, neighbours)


#: A file by its chosen name, with its other names (``file_state.one_name_per_file``).
Named = tuple[FileDetail, tuple[str, ...]]


def identical_groups(catalog: Catalog) -> list[DuplicateGroup]:
    """Byte-identical copies: one group per content found in more than one file on disk."""
    groups = []
    for same in catalog.files_of_contents(catalog.shared_contents()).values():
        files = one_name_per_file(same)
        if len(files) > 1:
            keeper = min(files, key=_keeper_key)
            groups.append(_group("identical", keeper, [(f, 0.0) for f in files if f is not keeper]))
    return _ordered(groups)


def similar_groups(
    catalog: Catalog, info: ModelInfo, index: VectorIndex, max_distance: float, neighbours: int = NEIGHBOURS
) -> list[DuplicateGroup]:
    """Groups of contents all within ``max_distance`` of each other (complete linkage),
    built around keepers in keeper order, one file per content."""
    a, b, distance = _close_pairs(catalog, info, index, max_distance, neighbours)
    # each content stands for its copies by its best file (its identical group's keeper)
    best = {
        cid: min(one_name_per_file(files), key=_keeper_key)
        for cid, files in catalog.files_of_contents(np.unique(a).tolist()).items()
    }
    grouped: set[int] = set()
    groups = []
    for keeper in sorted(best, key=lambda cid: _keeper_key(best[cid])):
        if keeper in grouped:
            continue
        lo, hi = np.searchsorted(a, keeper, "left"), np.searchsorted(a, keeper, "right")
        members = [
            (best[m], d)
            for m, d in zip(b[lo:hi].tolist(), distance[lo:hi].tolist(), strict=True)
            if m in best and m not in grouped
        ]
        members = _all_within(catalog, info, keeper, members, max_distance)
        if members:
            grouped.update([keeper, *(f.content_id for (f, _links), _d in members)])
            groups.append(_group("similar", best[keeper], members))
    return _ordered(groups)


def _all_within(
    catalog: Catalog, info: ModelInfo, keeper: int, members: list[tuple[Named, float]], max_distance: float
) -> list[tuple[Named, float]]:
    """The members, nearest to the keeper first, that are also within ``max_distance`` of
    every member taken before them: a chain A-B-C with A-C too far never shares a group,
    whichever of them is the keeper. Distances from the stored vectors, in float64."""
    if len(members) < 2:
        return members
    members = sorted(members, key=lambda fd: (fd[1], fd[0][0].path))
    ids, vectors = catalog.vectors_for(info, [f.content_id for (f, _links), _d in members])
    vector = {int(i): v.astype(np.float64) for i, v in zip(ids, vectors, strict=True)}
    taken: list[tuple[Named, float]] = []
    for member, d in members:
        mine = vector.get(member[0].content_id)
        if mine is None:  # its vector went since the pairs were found (an index run)
            continue
        if all(1.0 - float(mine @ vector[other.content_id]) <= max_distance for (other, _links), _d in taken):
            taken.append((member, d))
    return taken


def summarize(groups: Sequence[DuplicateGroup]) -> DuplicateSummary:
    """What acting on ``groups`` frees, each non-keeper file on disk counted once."""
    removable = {f.file_key: f.size for g in groups for f in g.others}
    identical = sum(g.kind == "identical" for g in groups)
    return DuplicateSummary(identical, len(groups) - identical, len(removable), sum(removable.values()))


def identical_copies(groups: Sequence[DuplicateGroup]) -> dict[int, tuple[int, int]]:
    """``{file id: (group number, files)}`` for each identical group's keeper: a similar group
    shows a content by that one file, and this says where all its copies are listed."""
    return {g.keeper.id: (number, len(g.files)) for number, g in enumerate(groups, 1) if g.kind == "identical"}


def _close_pairs(
    catalog: Catalog, info: ModelInfo, index: VectorIndex, max_distance: float, neighbours: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of contents found within ``max_distance`` as ``(a, b, distance)`` arrays,
    both ways round, sorted by ``a`` then ``b``; a pair seen from both ends keeps the larger
    of its two (float-rounded) distances, so the pairs are symmetric."""
    fetch = (lambda wanted: catalog.vectors_for(info, wanted)) if index.plan.rerank else None
    pairs, distances = [np.empty((0, 2), np.int64)], [np.empty(0)]
    for chunk_ids, vectors in catalog.iter_vectors(info, chunk=QUERY_CHUNK):
        scores, found = index.search(vectors, neighbours + 1, fetch=fetch)
        distance = np.maximum(1.0 - scores.astype(np.float64), 0.0)  # float64: compared exactly as reported
        rows, cols = np.nonzero((found >= 0) & (found != chunk_ids[:, None]) & (distance <= max_distance))
        pairs.append(np.stack([chunk_ids[rows], found[rows, cols]], axis=1))
        distances.append(distance[rows, cols])
    pair, distance = np.concatenate(pairs), np.concatenate(distances)
    pair, distance = np.concatenate([pair, pair[:, ::-1]]), np.concatenate([distance, distance])
    order = np.lexsort((-distance, pair[:, 1], pair[:, 0]))  # each pair's larger distance first
    pair, distance = pair[order], distance[order]
    first = np.ones(len(pair), bool)
    first[1:] = (pair[1:] != pair[:-1]).any(axis=1)
    return pair[first, 0], pair[first, 1], distance[first]


def _group(kind: str, keeper: Named, others: list[tuple[Named, float]]) -> DuplicateGroup:
    """``keeper``, then the ``others`` (with their distance to it) nearest first."""
    as_files = [
        DuplicateFile(f.id, f.path, f.size, f.width, f.height, f.mtime_ns, d, links, f.file_key)
        for (f, links), d in [(keeper, 0.0), *sorted(others, key=lambda fd: (fd[1], fd[0][0].path))]
    ]
    return DuplicateGroup(kind, as_files[0], tuple(as_files[1:]))


def _keeper_key(named: Named) -> tuple:
    """Most pixels first, then oldest, then by path (so the choice is stable)."""
    detail = named[0]
    return (-((detail.width or 0) * (detail.height or 0)), detail.mtime_ns, detail.path)


def _ordered(groups: list[DuplicateGroup]) -> list[DuplicateGroup]:
    return sorted(groups, key=lambda g: (-len(g.files), g.keeper.path))
