"""One FAISS index over one model's unit vectors, keyed by catalog content ids.

On disk an index is two files in the library's ``index/`` folder: ``<model>.<token>.faiss``
and ``<model>.json``, the commit point. The JSON names the current FAISS file, ties it to
the catalog state it holds (catalog id, vector-log position ``seq`` and the log's digest
chain there) and records the file's size, sha256 and a digest of its first and last 64 KiB.
Saving writes a new FAISS file, then replaces the JSON, then deletes the old file: every
step is atomic, so a reader or a crash sees either the old index or the new one.

``load`` checks the file against its commit point: ``verify="full"`` (writers, ``status``)
hashes every byte; ``"quick"`` (queries) checks size, head and tail digest, dimension and
vector count, which costs microseconds and keeps the memory-mapped open fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.atomic import fsync_dir, staged_file, write_atomically
from dreamsearch.errors import DreamsearchError
from dreamsearch.vector_index.policy import MAX_TRAIN_POINTS_PER_LIST, IndexPlan

if TYPE_CHECKING:
    import faiss

FORMAT = 2
#: Bytes at each end of a FAISS file that the quick check hashes (header, id map, tail).
EDGE_BYTES = 64 * 1024

#: ``ids -> (found_ids, float32 vectors)``: where exact re-ranking reads stored vectors.
VectorFetcher = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class IndexFileError(Exception):
    """The index files are missing, unreadable or of another format (so: rebuild)."""


@dataclass(frozen=True)
class IndexMeta:
    """What the JSON beside a FAISS file records. ``train_residual`` is the mean
    ``1 - max <x, centroid>`` of the training sample (IVF only), the baseline for drift."""

    model: str
    fingerprint: str
    dim: int
    plan: IndexPlan
    seq: int = 0
    trained_n: int = 0
    train_residual: float = 0.0
    file: str = ""
    #: The catalog this index was built from, and its vector-log chain at ``seq``.
    catalog_id: str = ""
    chain: str = ""
    #: What the FAISS file must look like: vectors held, bytes, sha256, edges digest.
    ntotal: int = 0
    size: int = 0
    sha256: str = ""
    edges: str = ""


def _faiss() -> ModuleType:
    import faiss

    return faiss


def _one_thread_after_fork() -> None:
    """A child forked after FAISS searched inherits its OpenMP pool without the pool's
    threads, and its first parallel search waits for them forever (faiss issue 5206).
    On one thread there is no pool to wait for; ``spawn`` gives a child all of them."""
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


class VectorIndex:
    """Add, remove and search unit vectors by id. Not thread-safe for writes; concurrent
    searches on an unchanging index are safe (FAISS read paths are)."""

    def __init__(self, index: faiss.Index, meta: IndexMeta) -> None:
        self.index = index
        self.meta = meta

    @property
    def plan(self) -> IndexPlan:
        return self.meta.plan

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def create(
        cls, plan: IndexPlan, meta: IndexMeta, training: np.ndarray, collection_size: int, seed: int = 1234
    ) -> VectorIndex:
        """An empty index of ``plan``, trained (IVF plans) on ``training`` vectors, a uniform
        sample of the ``collection_size`` vectors it is built for (recorded as
        ``trained_n``: the retraining policy compares later growth with it)."""
        faiss = _faiss()
        index = faiss.index_factory(meta.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        residual = 0.0
        if plan.needs_training:
            sample = _training_sample(training, plan.nlist, seed)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = seed
            if faiss.get_num_gpus() > 0:  # k-means on the GPU; the index itself stays on CPU
                ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(meta.dim))
            index.train(sample)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # O(1) removal by id
            residual = _residual(ivf, sample)
        return cls(index, replace(meta, plan=plan, trained_n=collection_size, train_residual=residual))

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, plan: IndexPlan, meta: IndexMeta) -> VectorIndex:
        """A new index of ``plan`` holding ``vectors``, trained on them."""
        built = cls.create(plan, meta, vectors, len(vectors))
        built.add(ids, vectors)
        return built

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(_as_matrix(vectors, self.meta.dim), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        # faiss's Python wrapper takes an id array as well; its stub names only IDSelector
        return int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))  # type: ignore[arg-type]

    def ids(self) -> np.ndarray:
        """Every id the index holds (sorted); for checks and diagnostics, O(n)."""
        faiss = _faiss()
        if not self.plan.needs_training:
            return np.sort(faiss.vector_to_array(faiss.downcast_index(self.index).id_map))
        invlists = faiss.extract_index_ivf(self.index).invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(invlists.nlist)
            if invlists.list_size(i)
        ]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def residual(self, vectors: np.ndarray) -> float:
        """Mean distance of ``vectors`` to their nearest centroid (0 for flat indexes)."""
        if not self.plan.needs_training or not len(vectors):
            return 0.0
        return _residual(_faiss().extract_index_ivf(self.index), _as_matrix(vectors, self.meta.dim))

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None, fetch: VectorFetcher | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ``(scores, ids)`` per query, best first; ``-1`` ids pad short lists.

        With ``fetch``, candidates (``rerank · k`` of them for PQ plans) are re-scored with
        exact inner products of the stored vectors, so reported scores are exact."""
        queries = _as_matrix(queries, self.meta.dim)
        depth = k * max(1, self.plan.rerank) if fetch else k
        params = None
        if self.plan.needs_training:
            faiss = _faiss()
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.plan.nprobe)
        scores, ids = self.index.search(queries, min(depth, max(len(self), 1)), params=params)
        if fetch is None:
            return _pad(scores, ids, k)
        return _rerank(queries, ids, k, fetch)

    # persistence ----------------------------------------------------------------------

    def save(self, folder: Path, seq: int, catalog_id: str, chain: str) -> None:
        """Write atomically as the index of ``self.meta.model`` holding catalog
        ``catalog_id``'s vectors up to log position ``seq`` (where the chain is ``chain``)."""
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{_safe(self.meta.model)}.{secrets.token_hex(4)}.faiss"
        try:
            with staged_file(folder / name) as staged:
                _faiss().write_index(self.index, str(staged))
                size, sha256, edges = _file_digests(staged, full=True)
        except RuntimeError as exc:  # FAISS reports a full disk this way
            raise DreamsearchError(
                f"{folder / name}: cannot write the index "
                f"({str(exc).strip().splitlines()[-1]}); the catalog is intact, "
                "free some space and run the command again"
            ) from None
        self.meta = replace(
            self.meta,
            seq=seq,
            file=name,
            catalog_id=catalog_id,
            chain=chain,
            ntotal=len(self),
            size=size,
            sha256=sha256,
            edges=edges,
        )
        write_atomically(meta_path(folder, self.meta.model), _meta_to_json(self.meta))
        fsync_dir(folder)
        for old in folder.glob(f"{_safe(self.meta.model)}.*.faiss"):  # earlier versions, crash leftovers
            if old.name != name:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path, model: str, mmap: bool = True, verify: str = "quick") -> VectorIndex:
        """Open the current index of ``model``, checked against its commit point
        (``verify``: ``quick`` or ``full``, see the module docstring), or raise
        :class:`IndexFileError` saying what is wrong. ``mmap`` maps it read-only (fast,
        shared between processes), otherwise it is read into memory and can be changed."""
        meta = read_meta(folder, model)
        if meta is None:
            raise IndexFileError(f"no index for '{model}' in {folder}")
        if not (folder / meta.file).exists():  # a writer replaced it between our two reads
            meta = read_meta(folder, model) or meta
        path = folder / meta.file
        check_file(path, meta, full=verify == "full")
        faiss = _faiss()
        try:
            if mmap:
                try:
                    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
                except RuntimeError:  # index types FAISS cannot map
                    index = faiss.read_index(str(path))
            else:
                index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexFileError(f"{path}: unreadable FAISS index ({str(exc).splitlines()[0]})") from None
        if (index.d, index.ntotal) != (meta.dim, meta.ntotal):
            raise IndexFileError(
                f"{path}: holds {index.ntotal} vectors of {index.d} values, "
                f"its commit point says {meta.ntotal} of {meta.dim}"
            )
        return cls(index, meta)


def check_file(path: Path, meta: IndexMeta, full: bool) -> None:
    """Raise :class:`IndexFileError` unless the file at ``path`` is the one ``meta``
    describes: same size and edge digest, and with ``full`` the same sha256."""
    try:
        size, sha256, edges = _file_digests(path, full)
    except FileNotFoundError:
        raise IndexFileError(f"{path}: missing") from None
    except OSError as exc:
        raise IndexFileError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if size != meta.size:
        raise IndexFileError(f"{path}: {size} bytes, its commit point says {meta.size} (truncated or replaced)")
    if edges != meta.edges or (full and sha256 != meta.sha256):
        raise IndexFileError(f"{path}: checksum mismatch (the file was damaged)")


def _file_digests(path: Path, full: bool) -> tuple[int, str, str]:
    """``(size, sha256 of every byte or "" unless full, sha256 of the first and last
    EDGE_BYTES)``."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        whole = ""
        if full:
            digest = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
            whole = digest.hexdigest()
            handle.seek(0)
        edges = hashlib.sha256(handle.read(EDGE_BYTES))
        handle.seek(max(0, size - EDGE_BYTES))
        edges.update(handle.read(EDGE_BYTES))
    return size, whole, edges.hexdigest()


def _training_sample(vectors: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    limit = nlist * MAX_TRAIN_POINTS_PER_LIST
    if len(vectors) <= limit:
        return _as_matrix(vectors, vectors.shape[1])
    pick = np.sort(np.random.default_rng(seed).choice(len(vectors), size=limit, replace=False))
    return _as_matrix(vectors[pick], vectors.shape[1])


def _residual(ivf: faiss.IndexIVF, vectors: np.ndarray) -> float:
    scores, _ = ivf.quantizer.search(vectors, 1)
    return float(np.mean(1.0 - scores[:, 0]))


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.shape[1] != dim:
        raise ValueError(f"vectors have {matrix.shape[1]} values, the index {dim}")
    return matrix


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if ids.shape[1] >= k:
        return scores[:, :k], ids[:, :k]
    extra = k - ids.shape[1]
    return (
        np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
        np.pad(ids, ((0, 0), (0, extra)), constant_values=-1),
    )


def _rerank(queries: np.ndarray, candidates: np.ndarray, k: int, fetch: VectorFetcher) -> tuple[np.ndarray, np.ndarray]:
    unique = np.unique(candidates[candidates >= 0])
    found_ids, found = fetch(unique)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    if not len(found_ids):
        return out_scores, out_ids
    row_of = {int(i): r for r, i in enumerate(found_ids)}
    for q, row in enumerate(candidates):
        rows = np.array([row_of[int(i)] for i in row if int(i) in row_of], dtype=np.int64)
        if not len(rows):
            continue
        exact = found[rows] @ queries[q]
        order = np.argsort(-exact, kind="stable")[:k]
        out_scores[q, : len(order)] = exact[order]
        out_ids[q, : len(order)] = found_ids[rows[order]]
    return out_scores, out_ids


# files ------------------------------------------------------------------------------


def _safe(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in model)


def meta_path(folder: Path, model: str) -> Path:
    return folder / f"{_safe(model)}.json"


def _meta_to_json(meta: IndexMeta) -> str:
    return json.dumps({"format": FORMAT, **asdict(meta)}, indent=1)


def read_meta(folder: Path, model: str) -> IndexMeta | None:
    """The saved metadata of ``model``'s index (None when there is none)."""
    path = meta_path(folder, model)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"{path}: unreadable ({exc})") from None
    if raw.pop("format", None) != FORMAT:
        raise IndexFileError(f"{path}: unknown index format")
    try:
        return IndexMeta(**{**raw, "plan": IndexPlan(**raw["plan"])})
    except (TypeError, KeyError) as exc:
        raise IndexFileError(f"{path}: malformed ({exc})") from None
