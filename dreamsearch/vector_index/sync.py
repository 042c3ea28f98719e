"""Keep a model's FAISS index in step with the catalog, which is the source of truth.

``open_index`` returns an index that answers for exactly the catalog's current vectors:
- missing, damaged (size, checksum), built for other weights, or from another catalog or
  another state of this one (``load_checked``) → rebuilt from the catalog;
- behind the catalog's vector log → caught up by replaying the log's net changes;
- outgrown or drifted (see ``needs_retraining``) → rebuilt with a fresh plan (writers).
A writer saves the result (atomically); a reader keeps it in memory only.

Every step is idempotent (replaying a change removes the id, then adds the catalog's
current vector if it still has one), so racing a writer can never leave an id missing
or doubled, only replayed twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from dreamsearch.catalog import Catalog, LogEntry, ModelInfo
from dreamsearch.defaults import DEFAULT_NPROBE
from dreamsearch.vector_index.index import IndexFileError, IndexMeta, VectorIndex
from dreamsearch.vector_index.policy import MAX_TRAIN_POINTS_PER_LIST, IndexPlan, plan_for

log = logging.getLogger(__name__)

#: Retrain when new vectors sit this much farther from their centroids than the training
#: sample did (measured: a new photo domain raised it from 0.24 to 0.88; recall fell to 0.45).
DRIFT_RATIO = 1.5
#: ...judged once this many vectors arrived since training (or 10% of the collection).
DRIFT_MIN_NEW = 1_000
#: Retrain when the collection has grown this many times since training.
GROWTH_RATIO = 4


def open_index(
    catalog: Catalog,
    model: ModelInfo,
    folder: Path,
    writable: bool = False,
    nprobe: int = DEFAULT_NPROBE,
) -> VectorIndex:
    """The index of ``model`` in ``folder``, up to date with ``catalog``. Writers verify
    every byte of the saved file; readers the cheap checks (see ``VectorIndex.load``)."""
    target = catalog.last_seq(model)
    verify = "full" if writable else "quick"
    try:
        index = load_checked(catalog, model, folder, mmap=not writable, verify=verify)
    except IndexFileError as exc:
        log.info("rebuilding the %s index: %s", model.name, exc)
        return _rebuild(catalog, model, folder, writable, nprobe)
    if index.meta.seq == target:
        return index
    if not writable:  # mapped files are read-only
        try:
            index = load_checked(catalog, model, folder, mmap=False, verify=verify)
        except IndexFileError:
            return _rebuild(catalog, model, folder, writable, nprobe)
    changes = catalog.changes_since(model, index.meta.seq)
    if not changes:  # a writer saved a newer index meanwhile
        return index
    added = apply_changes(index, catalog, model, changes)
    # Retraining is the writer's job: a reader answers correctly from the caught-up index.
    if writable and needs_retraining(index, added, nprobe):
        return _rebuild(catalog, model, folder, writable, nprobe)
    index.meta = replace(index.meta, seq=changes[-1].seq)
    if writable:
        _save(index, catalog, model, folder)
    return index


def load_checked(
    catalog: Catalog, model: ModelInfo, folder: Path, mmap: bool = True, verify: str = "quick"
) -> VectorIndex:
    """The saved index of ``model``, or :class:`IndexFileError` saying why it cannot stand
    for this catalog: damaged file, other weights, another catalog (deleted and made
    again), or another state of this catalog (restored from an older copy, then changed)."""
    index = VectorIndex.load(folder, model.name, mmap=mmap, verify=verify)
    meta = index.meta
    if (meta.fingerprint, meta.dim) != (model.fingerprint, model.dim):
        raise IndexFileError("built for other weights")
    if meta.catalog_id != catalog.identity():
        raise IndexFileError("built from another catalog (was catalog.sqlite replaced?)")
    if catalog.chain_at(model, meta.seq) != meta.chain:
        raise IndexFileError("built from another state of the catalog (was catalog.sqlite restored from a copy?)")
    return index


def save_indexes(catalog: Catalog, folder: Path, models: Sequence[ModelInfo] | None = None) -> None:
    """Catch the indexes of ``models`` (default: every model the catalog holds) up with
    the catalog and save them: what every writer does after changing the catalog."""
    if models is None:
        models = catalog.models()
    for model in models:
        open_index(catalog, model, folder, writable=True)


def apply_changes(index: VectorIndex, catalog: Catalog, model: ModelInfo, changes: list[LogEntry]) -> np.ndarray:
    """Replay the net effect of ``changes`` (the last operation per id wins); returns the
    vectors added, for the drift check."""
    final: dict[int, str] = {}
    for entry in changes:
        final[entry.content_id] = entry.op
    touched = np.fromiter(final, dtype=np.int64, count=len(final))
    index.remove(touched)
    ids, vectors = catalog.vectors_for(model, [i for i, op in final.items() if op == "add"])
    index.add(ids, vectors)
    return vectors


def needs_retraining(index: VectorIndex, added: np.ndarray, nprobe: int = DEFAULT_NPROBE) -> bool:
    """True when the size policy now wants another kind of index, the collection has
    grown ``GROWTH_RATIO``× since training, or new vectors drifted from the centroids."""
    if plan_for(len(index), index.meta.dim, nprobe).kind != index.plan.kind:
        return True
    return outgrown_or_drifted(index, added)


def outgrown_or_drifted(index: VectorIndex, added: np.ndarray) -> bool:
    """For IVF indexes: grown ``GROWTH_RATIO``× since training, or the ``added`` vectors
    sit ``DRIFT_RATIO``× farther from their centroids than the training sample did."""
    n = len(index)
    if not index.plan.needs_training:
        return False
    if n >= GROWTH_RATIO * max(index.meta.trained_n, 1):
        return True
    if len(added) >= min(DRIFT_MIN_NEW, max(1, n // 10)):
        return index.residual(added) > DRIFT_RATIO * max(index.meta.train_residual, 1e-6)
    return False


def rebuild(
    catalog: Catalog, model: ModelInfo, plan: IndexPlan | None = None, nprobe: int = DEFAULT_NPROBE, seed: int = 1234
) -> VectorIndex:
    """A fresh index of every vector the catalog holds for ``model``, trained on a seeded
    uniform sample and filled chunk by chunk. Memory: the ids and the sample while training,
    then only the index plus one chunk (``benchmarks/ann.py --catalog-build``)."""
    seq = catalog.last_seq(model)  # read first: later changes are replayed, never lost
    ids = catalog.vector_ids(model)
    plan = plan or plan_for(len(ids), model.dim, nprobe)
    meta = IndexMeta(model.name, model.fingerprint, model.dim, plan, seq=seq)
    # The sample is only an argument, so it is freed as soon as training is done.
    index = VectorIndex.create(plan, meta, _training_vectors(catalog, model, ids, plan, seed), len(ids), seed)
    del ids  # 8 bytes per vector, not needed for adding
    for chunk_ids, chunk in catalog.iter_vectors(model):
        index.add(chunk_ids, chunk)
    return index


def _training_vectors(catalog: Catalog, model: ModelInfo, ids: np.ndarray, plan: IndexPlan, seed: int) -> np.ndarray:
    """The seeded uniform sample of ``ids`` that k-means trains on (none for flat plans)."""
    if not plan.needs_training:
        return np.empty((0, model.dim), np.float32)
    limit = plan.nlist * MAX_TRAIN_POINTS_PER_LIST
    pick = ids if len(ids) <= limit else np.random.default_rng(seed).choice(ids, size=limit, replace=False)
    return catalog.vectors_for(model, np.sort(pick))[1]


def _rebuild(catalog: Catalog, model: ModelInfo, folder: Path, writable: bool, nprobe: int) -> VectorIndex:
    index = rebuild(catalog, model, nprobe=nprobe)
    # Anything committed while we read is replayed now, so the index is never behind.
    later = catalog.changes_since(model, index.meta.seq)
    if later:
        apply_changes(index, catalog, model, later)
        index.meta = replace(index.meta, seq=later[-1].seq)
    if writable:
        _save(index, catalog, model, folder)
    return index


def _save(index: VectorIndex, catalog: Catalog, model: ModelInfo, folder: Path) -> None:
    seq = index.meta.seq
    index.save(folder, seq, catalog.identity(), catalog.chain_at(model, seq) or "")
