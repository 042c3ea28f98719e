"""Reads and writes of the catalog, each write one transaction.

Writers use ``BEGIN IMMEDIATE`` so two processes never deadlock upgrading a read lock;
readers (WAL) see the last committed state and never block the writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Row, and_, bindparam, case, delete, func, insert, literal, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import InstrumentedAttribute, aliased

from dreamsearch.catalog.chain import next_chain
from dreamsearch.catalog.database import CatalogOutdatedError, create_catalog_engine, upgrade
from dreamsearch.catalog.schema import CatalogInfo, Content, File, Model, Root, Vector, VectorLogEntry
from dreamsearch.errors import ChangedOnDiskError, DreamsearchError
from dreamsearch.file_state import on_disk_as_stored

#: How vectors are stored, by the name in ``models.storage_dtype`` (float32 only, so far).
STORAGE_DTYPES = {"float32": np.float32}
#: ``catalog_info`` key present while an indexer defers dropping orphaned contents.
_ORPHANS_DUE = "orphans_due"
#: ``File.content_id`` as read by the queries that keep only files with a content
#: (``is_not(None)``, or ``in_`` a list of ids): never None there
_CONTENT_ID = cast("InstrumentedAttribute[int]", File.content_id)

T = TypeVar("T")


@dataclass(frozen=True)
class ModelInfo:
    id: int
    name: str
    dim: int
    fingerprint: str
    storage_dtype: str


@dataclass(frozen=True)
class FileEntry:
    """A file as the indexer saw it. ``content_hash`` is None for a file that failed,
    with ``error`` saying why and ``failure_kind`` whether that can pass."""

    relpath: str
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    error: str | None = None
    inode: int | None = None
    device: int | None = None
    ctime_ns: int | None = None
    failure_kind: str | None = None


@dataclass(frozen=True)
class StoredFile:
    """What the catalog holds of a path: its state on disk when indexed
    (``dreamsearch.file_state``) and what came of it."""

    size: int
    mtime_ns: int
    status: str
    content_hash: str | None
    inode: int | None = None
    device: int | None = None
    ctime_ns: int | None = None
    failure_kind: str | None = None
    failed_runs: int = 0


@dataclass(frozen=True)
class FileDetail:
    """An indexed file at ``path`` (root / relative path) and what its content looks like;
    ``id`` is the file's catalog id (stable while the path stays indexed)."""

    id: int
    content_id: int
    path: str
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    inode: int | None = None
    device: int | None = None
    ctime_ns: int | None = None
    #: The format the decoder found when it was indexed (``JPEG``, ``PNG``...; None in old rows).
    format: str | None = None

    @property
    def file_key(self) -> tuple[object, ...]:
        """The same for every name of one file on disk (device and inode), and for no
        other file; a row from before inodes were stored is a file of its own."""
        return ("inode", self.device, self.inode) if self.inode is not None else ("row", self.id)


@dataclass(frozen=True)
class FailedFile:
    """A file that could not be indexed: why, whether that can pass (``permanent`` or
    ``transient``; None in rows from before 0004) and for how many runs in a row."""

    path: str
    reason: str
    kind: str | None
    runs: int


@dataclass(frozen=True)
class RootPlace:
    """Where a folder's files live in the catalog: under root ``id`` (at ``path``), their
    relative paths starting with ``prefix`` (``""`` when the folder is the root itself)."""

    id: int
    path: Path
    prefix: str


@dataclass(frozen=True)
class LogEntry:
    seq: int
    content_id: int
    op: str


# Undecodable bytes in file and folder names become lone surrogates (U+DC80-U+DCFF) in Python, which
# SQLite cannot store; we keep them reversibly in the private-use range U+F780-U+F7FF.
_TO_DB = {0xDC80 + i: 0xF780 + i for i in range(128)}
_FROM_DB = {v: k for k, v in _TO_DB.items()}


def path_to_db(relpath: str) -> str:
    return relpath.translate(_TO_DB)


def path_from_db(stored: str) -> str:
    return stored.translate(_FROM_DB)


def _chunks(items: Sequence[T], size: int = 500) -> Iterator[list[T]]:
    """Slices small enough for SQLite's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _append_log(connection: Connection, model_id: int, entries: Sequence[tuple[int, str, str]]) -> None:
    """Append ``(content id, content hash, op)`` entries to ``model_id``'s vector log,
    extending its digest chain."""
    if not entries:
        return
    chain = (
        connection.execute(
            select(VectorLogEntry.chain)
            .where(VectorLogEntry.model_id == model_id)
            .order_by(VectorLogEntry.seq.desc())
            .limit(1)
        ).scalar()
        or ""
    )
    rows = []
    for content_id, content_hash, op in entries:
        chain = next_chain(chain, op, content_id, content_hash)
        rows.append({"model_id": model_id, "content_id": content_id, "op": op, "chain": chain})
    connection.execute(insert(VectorLogEntry), rows)


def _short(fingerprint: str) -> str:
    """A fingerprint as people compare them: 12 hex digits, without its scheme prefix, and
    any qualifier after ``+`` (the precision of int8 vectors: ``…+int8``)."""
    digest, plus, qualifier = fingerprint.rpartition(":")[2].partition("+")
    return digest[:12] + plus + qualifier


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Catalog:
    """The catalog of one library (``catalog.sqlite``), migrated to the current schema.
    ``read_only`` catalogs need no write access to the file or its folder (readers)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.engine = create_catalog_engine(self.path, read_only)
        try:
            try:
                upgrade(self.engine, self.path, read_only=read_only)
            except CatalogOutdatedError:
                if not os.access(self.path.parent, os.W_OK):
                    raise
                Catalog(self.path).close()  # a reader that may write migrates once, then reads
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            connection.info["write"] = True
            try:
                with connection.begin():
                    yield connection
            finally:
                connection.info.pop("write", None)

    # models and roots ---------------------------------------------------------------

    def ensure_model(self, name: str, dim: int, fingerprint: str) -> ModelInfo:
        """Register ``name`` (or return it). Different weights under the same name are
        refused: their vectors would not be comparable with the stored ones."""
        with self._write() as connection:
            row = connection.execute(select(Model).where(Model.name == name)).first()
            if row is None:
                connection.execute(
                    insert(Model).values(
                        name=name, dim=dim, fingerprint=fingerprint, storage_dtype="float32", created_at=_now()
                    )
                )
                row = connection.execute(select(Model).where(Model.name == name)).one()
        info = ModelInfo(row.id, row.name, row.dim, row.fingerprint, row.storage_dtype)
        if (info.dim, info.fingerprint) != (dim, fingerprint):
            raise DreamsearchError(
                f"this library holds '{name}' vectors from other weights or precision ({_short(info.fingerprint)}, "
                f"dim {info.dim}); they cannot be mixed with {_short(fingerprint)} (dim {dim})"
            )
        return info

    def model(self, name: str) -> ModelInfo | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(Model).where(Model.name == name)).first()
        return None if row is None else ModelInfo(row.id, row.name, row.dim, row.fingerprint, row.storage_dtype)

    def models(self) -> list[ModelInfo]:
        """Every model the catalog holds, by name."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(Model).order_by(Model.name)).all()
        return [ModelInfo(row.id, row.name, row.dim, row.fingerprint, row.storage_dtype) for row in rows]

    def find_root(self, folder: Path) -> RootPlace | None:
        """The indexed root that ``folder`` is, or lies inside (None: neither)."""
        folder = Path(folder).resolve()
        for root_id, root in self.roots().items():
            if folder.is_relative_to(root):
                inside = folder.relative_to(root).as_posix()
                return RootPlace(root_id, Path(root), "" if inside == "." else inside + "/")
        return None

    def attach(self, folder: Path) -> RootPlace:
        """Where ``folder``'s files belong, making it a root if it lies in none. One file on
        disk is one file in the library: a folder inside a root joins that root (its files
        are stored under a relative ``prefix``), and roots inside a root being indexed
        (also those an older version left) are merged into it, their files keeping their
        contents and vectors."""
        found = self.find_root(folder)
        if found is not None and found.prefix:
            return found
        folder = Path(folder).resolve()
        with self._write() as connection:
            stored = path_to_db(str(folder))
            connection.execute(sqlite_insert(Root).values(path=stored, added_at=_now()).on_conflict_do_nothing())
            root_id = connection.execute(select(Root.id).where(Root.path == stored)).scalar_one()
            for inner_id, inner in self.roots(connection).items():
                if inner_id != root_id and Path(inner).is_relative_to(folder):
                    self._merge_root(connection, inner_id, root_id, Path(inner).relative_to(folder).as_posix() + "/")
        return RootPlace(root_id, folder, "")

    def _merge_root(self, connection: Connection, inner_id: int, outer_id: int, prefix: str) -> None:
        """Move root ``inner_id``'s files under ``outer_id`` at ``prefix``, then drop it. A
        file the outer root already holds (stored twice by an older version) keeps the
        outer row; contents left without a file lose their vectors as usual."""
        moved = literal(path_to_db(prefix)) + File.relpath
        outer = aliased(File)
        outer_paths = select(outer.relpath).where(outer.root_id == outer_id)
        previous = set(
            connection.execute(
                select(_CONTENT_ID).where(File.root_id == inner_id, File.content_id.is_not(None))
            ).scalars()
        )
        connection.execute(delete(File).where(File.root_id == inner_id, moved.in_(outer_paths)))
        connection.execute(update(File).where(File.root_id == inner_id).values(root_id=outer_id, relpath=moved))
        connection.execute(delete(Root).where(Root.id == inner_id))
        self._drop_orphans(connection, previous)

    def restamp_model(self, name: str, old: str, new: str) -> ModelInfo | None:
        """Replace model ``name``'s fingerprint ``old`` by ``new``, the same weights named by
        a newer rule (only if it is still ``old``: two writers re-stamp once); the row now."""
        with self._write() as connection:
            connection.execute(
                update(Model).where(Model.name == name, Model.fingerprint == old).values(fingerprint=new)
            )
        return self.model(name)

    # writes ---------------------------------------------------------------------------

    def commit_batch(
        self,
        root_id: int,
        files: Sequence[FileEntry],
        vectors: dict[str, dict[str, np.ndarray]] | None = None,
        drop_orphans: bool = True,
    ) -> set[int]:
        """Record ``files`` under ``root_id`` and ``vectors[model][content_hash]`` in one
        transaction: a crash leaves either all of the batch or none of it. Returns the
        contents these paths held before. With ``drop_orphans`` off, those that no file
        refers to any more are kept (with their vectors) for :meth:`drop_orphans`: an
        indexer may still record another file with that content later in its run."""
        vectors = vectors or {}
        now = _now()
        with self._write() as connection:
            previous = self._contents_of(connection, root_id, [entry.relpath for entry in files])
            content_ids = self._upsert_contents(connection, files)
            if files:
                upsert = sqlite_insert(File)
                changing = (
                    "size",
                    "mtime_ns",
                    "inode",
                    "device",
                    "ctime_ns",
                    "content_id",
                    "status",
                    "error",
                    "failure_kind",
                    "updated_at",
                )
                new = upsert.excluded
                # one more run in a row when it failed again for the same reason
                again = case(
                    (
                        and_(new.status == "failed", File.status == "failed", File.error == new.error),
                        File.failed_runs + 1,
                    ),
                    else_=new.failed_runs,
                )
                connection.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[File.root_id, File.relpath],
                        set_={**{name: new[name] for name in changing}, "failed_runs": again},
                    ),
                    [
                        dict(
                            root_id=root_id,
                            relpath=entry.relpath,
                            first_seen=now,
                            size=entry.size,
                            mtime_ns=entry.mtime_ns,
                            inode=entry.inode,
                            device=entry.device,
                            ctime_ns=entry.ctime_ns,
                            content_id=None if entry.content_hash is None else content_ids.get(entry.content_hash),
                            status="ok" if entry.content_hash else "failed",
                            error=entry.error,
                            failure_kind=None if entry.content_hash else entry.failure_kind,
                            failed_runs=0 if entry.content_hash else 1,
                            updated_at=now,
                        )
                        for entry in files
                    ],
                )
            for model_name, by_hash in vectors.items():
                model = self._model_row(connection, model_name)
                self._put_vectors(connection, model, {content_ids[h]: (h, vector) for h, vector in by_hash.items()})
            if drop_orphans:
                self._drop_orphans(connection, previous)
        return previous

    def defer_orphans(self) -> bool:
        """Note that orphaned contents will be dropped at the end of a run (see
        ``commit_batch``). True if a run that noted it died before its
        ``drop_orphans``: then the caller should sweep every content."""
        with self._write() as connection:
            due = connection.execute(select(CatalogInfo.value).where(CatalogInfo.key == _ORPHANS_DUE)).first()
            if due is None:
                connection.execute(insert(CatalogInfo).values(key=_ORPHANS_DUE, value="1"))
        return due is not None

    def drop_orphans(self, candidates: set[int] | None = None) -> None:
        """Delete those of ``candidates`` (every content when ``None``) that no file refers
        to, logging the removal of their vectors; clears the note of ``defer_orphans``."""
        with self._write() as connection:
            if candidates is None:
                candidates = set(
                    connection.execute(
                        select(Content.id).where(~select(File.id).where(File.content_id == Content.id).exists())
                    ).scalars()
                )
            self._drop_orphans(connection, candidates)
            connection.execute(delete(CatalogInfo).where(CatalogInfo.key == _ORPHANS_DUE))

    @staticmethod
    def _upsert_contents(connection: Connection, files: Sequence[FileEntry]) -> dict[str, int]:
        rows: dict[str, dict[str, object]] = {}
        for entry in files:  # a byte copy (no picture details) never hides the decoded file's
            if entry.content_hash is not None and (entry.content_hash not in rows or entry.width is not None):
                rows[entry.content_hash] = dict(
                    hash=entry.content_hash,
                    size=entry.size,
                    width=entry.width,
                    height=entry.height,
                    format=entry.format,
                )
        ids: dict[str, int] = {}
        if rows:
            connection.execute(sqlite_insert(Content).on_conflict_do_nothing(), list(rows.values()))
            for chunk in _chunks(list(rows)):
                ids.update(connection.execute(select(Content.hash, Content.id).where(Content.hash.in_(chunk))).all())
        return ids

    @staticmethod
    def _model_row(connection: Connection, name: str) -> Row[Any]:
        row = connection.execute(select(Model).where(Model.name == name)).first()
        if row is None:
            raise DreamsearchError(f"model '{name}' is not registered in this library")
        return row

    @staticmethod
    def _put_vectors(connection: Connection, model: Row[Any], vectors: dict[int, tuple[str, np.ndarray]]) -> None:
        """Store (or replace) vectors by content id (``id -> (content hash, vector)``),
        logging each change for the index."""
        blobs = {}
        for content_id, (_hash, vector) in vectors.items():
            vector = np.asarray(vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != model.dim:
                raise ValueError(f"'{model.name}' vectors have {model.dim} values, got {vector.shape[0]}")
            blobs[content_id] = vector.astype(STORAGE_DTYPES[model.storage_dtype]).tobytes()
        if not blobs:
            return
        existing: set[int] = set()
        for chunk in _chunks(list(blobs)):
            existing.update(
                connection.execute(
                    select(Vector.content_id).where(Vector.model_id == model.id, Vector.content_id.in_(chunk))
                ).scalars()
            )
        if existing:
            connection.execute(
                update(Vector)
                .where(Vector.content_id == bindparam("cid"), Vector.model_id == model.id)
                .values(data=bindparam("blob")),
                [{"cid": cid, "blob": blobs[cid]} for cid in existing],
            )
        fresh = [cid for cid in blobs if cid not in existing]
        if fresh:
            connection.execute(
                insert(Vector), [{"content_id": cid, "model_id": model.id, "data": blobs[cid]} for cid in fresh]
            )
        # a replaced vector is logged as removed, then added (the index replays in order)
        _append_log(
            connection,
            model.id,
            [
                *((cid, vectors[cid][0], "remove") for cid in sorted(existing)),
                *((cid, vectors[cid][0], "add") for cid in blobs),
            ],
        )

    def remove_files(self, root_id: int, relpaths: Sequence[str]) -> int:
        """Forget files; contents no file refers to any more lose their vectors (logged).
        Returns how many of ``relpaths`` the catalog held."""
        removed = 0
        with self._write() as connection:
            previous = self._contents_of(connection, root_id, relpaths)
            for chunk in _chunks(relpaths):
                removed += connection.execute(
                    delete(File).where(File.root_id == root_id, File.relpath.in_(chunk))
                ).rowcount
            self._drop_orphans(connection, previous)
        return removed

    @staticmethod
    def _contents_of(connection: Connection, root_id: int, relpaths: Sequence[str]) -> set[int]:
        found: set[int] = set()
        for chunk in _chunks(relpaths):
            found.update(
                connection.execute(
                    select(_CONTENT_ID).where(
                        File.root_id == root_id, File.relpath.in_(chunk), File.content_id.is_not(None)
                    )
                ).scalars()
            )
        return found

    @staticmethod
    def _drop_orphans(connection: Connection, candidates: set[int]) -> None:
        """Delete those of ``candidates`` (contents whose files just changed) that no file
        refers to any more, logging the removal of their vectors."""
        referenced: set[int] = set()
        for chunk in _chunks(sorted(candidates)):
            referenced.update(connection.execute(select(_CONTENT_ID).where(File.content_id.in_(chunk))).scalars())
        orphans = sorted(candidates - referenced)
        for chunk in _chunks(orphans):
            gone = connection.execute(
                select(Vector.model_id, Vector.content_id, Content.hash)
                .join(Content, Content.id == Vector.content_id)
                .where(Vector.content_id.in_(chunk))
                .order_by(Vector.model_id, Vector.content_id)
            ).all()
            for model_id in sorted({m for m, _c, _h in gone}):
                _append_log(connection, model_id, [(c, h, "remove") for m, c, h in gone if m == model_id])
            connection.execute(delete(Content).where(Content.id.in_(chunk)))

    # reads ----------------------------------------------------------------------------

    def identity(self) -> str:
        """The random id this catalog was given when it was created."""
        with self.engine.connect() as connection:
            return connection.execute(select(CatalogInfo.value).where(CatalogInfo.key == "catalog_id")).scalar_one()

    def chain_at(self, model: ModelInfo, seq: int) -> str | None:
        """The log's digest chain at ``seq`` (``""`` at 0), or None when this catalog has no
        such entry for ``model``: an index recorded at ``seq`` came from another state."""
        if seq == 0:
            return ""
        with self.engine.connect() as connection:
            return connection.execute(
                select(VectorLogEntry.chain).where(VectorLogEntry.seq == seq, VectorLogEntry.model_id == model.id)
            ).scalar()

    def last_seq(self, model: ModelInfo) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                select(func.coalesce(func.max(VectorLogEntry.seq), 0)).where(VectorLogEntry.model_id == model.id)
            ).scalar_one()

    def changes_since(self, model: ModelInfo, seq: int) -> list[LogEntry]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(VectorLogEntry.seq, VectorLogEntry.content_id, VectorLogEntry.op)
                .where(VectorLogEntry.model_id == model.id, VectorLogEntry.seq > seq)
                .order_by(VectorLogEntry.seq)
            ).all()
        return [LogEntry(*row) for row in rows]

    def count_vectors(self, model: ModelInfo) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                select(func.count()).select_from(Vector).where(Vector.model_id == model.id)
            ).scalar_one()

    def vector_ids(self, model: ModelInfo) -> np.ndarray:
        with self.engine.connect() as connection:
            return np.fromiter(
                connection.execute(select(Vector.content_id).where(Vector.model_id == model.id)).scalars(),
                dtype=np.int64,
            )

    def iter_vectors(self, model: ModelInfo, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All of ``model``'s vectors as ``(ids int64 [n], float32 [n, dim])`` chunks, in
        one read transaction so the chunks form one consistent snapshot."""
        dtype = STORAGE_DTYPES[model.storage_dtype]
        with self.engine.connect() as connection, connection.begin():
            result = connection.execution_options(yield_per=chunk).execute(
                select(Vector.content_id, Vector.data).where(Vector.model_id == model.id).order_by(Vector.content_id)
            )
            for rows in result.partitions():
                yield self._decode(rows, dtype, model.dim)

    def vectors_for(self, model: ModelInfo, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of ``ids`` that exist, as ``(ids, float32 [n, dim])``. Filled
        in place: a training sample of millions of vectors is held once, not twice."""
        dtype = STORAGE_DTYPES[model.storage_dtype]
        wanted = [int(i) for i in ids]
        found_ids, found = np.empty(len(wanted), np.int64), np.empty((len(wanted), model.dim), np.float32)
        filled = 0
        with self.engine.connect() as connection:
            for chunk in _chunks(wanted):
                rows = connection.execute(
                    select(Vector.content_id, Vector.data).where(
                        Vector.model_id == model.id, Vector.content_id.in_(chunk)
                    )
                ).all()
                got_ids, got = self._decode(rows, dtype, model.dim)
                found_ids[filled : filled + len(rows)], found[filled : filled + len(rows)] = got_ids, got
                filled += len(rows)
        return found_ids[:filled], found[:filled]

    @staticmethod
    def _decode(rows: Sequence[Any], dtype: npt.DTypeLike, dim: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=dtype).reshape(len(rows), dim)
        return ids, vectors.astype(np.float32)

    def files_under(self, root_id: int) -> dict[str, StoredFile]:
        """What the catalog knows of each file under ``root_id``, by relative path."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    File.relpath,
                    File.size,
                    File.mtime_ns,
                    File.status,
                    Content.hash,
                    File.inode,
                    File.device,
                    File.ctime_ns,
                    File.failure_kind,
                    File.failed_runs,
                )
                .outerjoin(Content, Content.id == File.content_id)
                .where(File.root_id == root_id)
            ).all()
        return {relpath: StoredFile(*state) for relpath, *state in rows}

    def vectors_under(self, root_id: int, model: ModelInfo) -> tuple[list[str], np.ndarray]:
        """``(relative paths, float32 [n, dim])`` of every file under ``root_id`` that has a
        ``model`` vector (files that failed have none)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(File.relpath, Vector.data)
                .join(Vector, Vector.content_id == File.content_id)
                .where(File.root_id == root_id, Vector.model_id == model.id)
                .order_by(File.relpath)
            ).all()
        _ids, vectors = self._decode(
            [(0, data) for _relpath, data in rows], STORAGE_DTYPES[model.storage_dtype], model.dim
        )
        return [path_from_db(relpath) for relpath, _data in rows], vectors

    def hashes_with_vectors(self, models: Sequence[ModelInfo], hashes: Sequence[str]) -> set[str]:
        """Those of ``hashes`` whose content already has a vector for every one of ``models``."""
        found: set[str] = set()
        with self.engine.connect() as connection:
            for chunk in _chunks(list(hashes)):
                rows = connection.execute(
                    select(Content.hash)
                    .join(Vector, Vector.content_id == Content.id)
                    .where(Content.hash.in_(chunk), Vector.model_id.in_([m.id for m in models]))
                    .group_by(Content.hash)
                    .having(func.count() == len(models))
                ).scalars()
                found.update(rows)
        return found

    def model_names(self) -> list[str]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(Model.name).order_by(Model.name)).scalars())

    def root_counts(self) -> list[tuple[str, int, int]]:
        """``(root path, ok files, failed files)`` for every root. Counted per (root, status)
        from the ``ix_files_root_status`` index alone: 6 ms for 100k files, where a join
        with ``roots`` summing over each row took 20 ms (``/api/status`` asks often)."""
        with self.engine.connect() as connection:
            roots = connection.execute(select(Root.id, Root.path).order_by(Root.path)).all()
            counts = {
                (root_id, status): count
                for root_id, status, count in connection.execute(
                    select(File.root_id, File.status, func.count()).group_by(File.root_id, File.status)
                )
            }
        return [
            (path_from_db(path), counts.get((root_id, "ok"), 0), counts.get((root_id, "failed"), 0))
            for root_id, path in roots
        ]

    def failed_files(self) -> list[FailedFile]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(Root.path, File.relpath, File.error, File.failure_kind, File.failed_runs)
                .join(Root, Root.id == File.root_id)
                .where(File.status == "failed")
                .order_by(Root.path, File.relpath)
            ).all()
        return [
            FailedFile(str(Path(path_from_db(root)) / path_from_db(relpath)), error or "", kind, runs)
            for root, relpath, error, kind, runs in rows
        ]

    def indexed_file_at(self, path: Path) -> FileDetail | None:
        """The indexed file at ``path`` (as written or with links resolved), None if the
        library does not hold it. One that changed on disk since it was indexed (size,
        mtime, inode, device or ctime) raises :class:`ChangedOnDiskError`: its stored vector
        is of another picture."""
        for root_id, relpath in self.locate(path):
            with self.engine.connect() as connection:
                row = connection.execute(
                    _DETAIL_COLUMNS.where(File.root_id == root_id, File.relpath == relpath, File.status == "ok")
                ).first()
            if row is not None:
                detail = _detail(row)
                if detail is None:
                    raise ChangedOnDiskError(
                        f"{path} changed since it was indexed: run `dreamsearch index` on its folder, "
                        "or query the file itself"
                    )
                return detail
        return None

    def content_id_of_hash(self, content_hash: str) -> int | None:
        with self.engine.connect() as connection:
            return connection.execute(select(Content.id).where(Content.hash == content_hash)).scalar()

    def locate(self, path: Path) -> list[tuple[int, str]]:
        """``(root id, stored relative path)`` for every root that ``path`` lies under,
        as written (a path through a followed symlink) or with links resolved."""
        forms = {Path(os.path.abspath(path)), Path(path).resolve()}
        found = {
            (root_id, path_to_db(form.relative_to(root).as_posix()))
            for root_id, root in self.roots().items()
            for form in forms
            if form.is_relative_to(root)
        }
        return sorted(found)

    def roots(self, connection: Connection | None = None) -> dict[int, str]:
        """Every root's absolute path by id (inside ``connection``'s transaction if given)."""
        if connection is None:
            with self.engine.connect() as connection:
                return self.roots(connection)
        rows = connection.execute(select(Root.id, Root.path).order_by(Root.path)).all()
        return {root_id: path_from_db(path) for root_id, path in rows}

    def forget_root(self, root_id: int) -> int:
        """Remove a root and all its files (vectors of contents left nowhere go too)."""
        with self.engine.connect() as connection:
            relpaths = list(connection.execute(select(File.relpath).where(File.root_id == root_id)).scalars())
        self.remove_files(root_id, relpaths)
        with self._write() as connection:
            connection.execute(delete(Root).where(Root.id == root_id))
        return len(relpaths)

    def paths_of(self, content_ids: Sequence[int]) -> dict[int, list[str]]:
        """Every current location (root path / relpath) of each content."""
        return {cid: [f.path for f in files] for cid, files in self.files_of_contents(content_ids).items()}

    def files_of_contents(self, content_ids: Sequence[int]) -> dict[int, list[FileDetail]]:
        """Every indexed file of each content that is on disk now, as indexed (same size
        and mtime), ordered by path. Results and duplicate groups come from here, so no
        command names a file that was deleted or changed since it was indexed."""
        out: dict[int, list[FileDetail]] = {}
        with self.engine.connect() as connection:
            for chunk in _chunks([int(i) for i in content_ids]):
                rows = connection.execute(
                    _DETAIL_COLUMNS.where(File.content_id.in_(chunk), File.status == "ok").order_by(
                        Root.path, File.relpath
                    )
                ).all()
                for row in rows:
                    detail = _detail(row)
                    if detail is not None:
                        out.setdefault(detail.content_id, []).append(detail)
        return out

    def file_detail(self, file_id: int) -> FileDetail | None:
        """The indexed file with this id, if it is on disk now as it was indexed."""
        with self.engine.connect() as connection:
            row = connection.execute(_DETAIL_COLUMNS.where(File.id == int(file_id), File.status == "ok")).first()
        return None if row is None else _detail(row)

    def shared_contents(self) -> list[int]:
        """Contents that live at more than one path (byte-identical copies)."""
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(_CONTENT_ID)
                    .where(File.status == "ok", File.content_id.is_not(None))
                    .group_by(File.content_id)
                    .having(func.count() > 1)
                    .order_by(File.content_id)
                ).scalars()
            )


_DETAIL_COLUMNS = (
    select(
        File.id,
        File.content_id,
        Root.path,
        File.relpath,
        File.size,
        File.mtime_ns,
        Content.width,
        Content.height,
        File.inode,
        File.device,
        File.ctime_ns,
        Content.format,
    )
    .join(Root, Root.id == File.root_id)
    .join(Content, Content.id == File.content_id)
)


def _detail(row: Sequence[Any]) -> FileDetail | None:
    """A ``_DETAIL_COLUMNS`` row as a ``FileDetail``, or None if the file is no longer on
    disk as it was indexed (so nothing names a deleted or changed file)."""
    file_id, content_id, root, relpath, *state = row
    detail = FileDetail(file_id, content_id, str(Path(path_from_db(root)) / path_from_db(relpath)), *state)
    return detail if on_disk_as_stored(detail.path, detail) else None
