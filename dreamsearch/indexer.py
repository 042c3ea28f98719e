"""Bring a library up to date with folders on disk: scan, diff, hash, decode, embed, commit.

The order is chosen so nothing is lost or redone:
1. scan every root; files whose size and mtime match the catalog are skipped unread;
2. new or changed files are hashed (in worker processes); a hash the catalog already has
   vectors for is a copy or a move and is recorded without decoding;
3. the rest are decoded in worker processes (JPEG draft, EXIF, modes), embedded in batches
   by every model, and committed batch by batch: files, contents and vectors in one
   transaction, so a killed run loses at most the batch in flight;
4. only then are files gone from disk removed (a move keeps its vectors: its new path was
   recorded in step 2 before the old one goes);
5. the FAISS indexes catch up from the catalog and are saved (also every few batches).
Ctrl-C stops after the current batch; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamsearch.catalog import Catalog, FileEntry, ModelInfo, relpath_from_db, relpath_to_db
from dreamsearch.errors import DreamsearchError
from dreamsearch.images import DEFAULT_MAX_PIXELS
from dreamsearch.library import LibraryFolder
from dreamsearch.models.base import Embedder
from dreamsearch.scan import ScannedFile, scan
from dreamsearch.vector_index import save_indexes
from dreamsearch.workers import DECODE_TIMEOUT_S, DecodeJob, Decoded, Hashed, decode_file, hash_file, init_worker

SAVE_INDEX_EVERY = 50  # batches
REUSE_BATCH = 500


@dataclass
class IndexReport:
    """What a run did; ``failures`` holds ``(path, reason)`` for every unreadable file."""

    found: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    moved: int = 0
    copied: int = 0
    removed: int = 0
    failed: int = 0
    embedded: int = 0
    to_embed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing_roots: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        keys = ("found", "unchanged", "new", "changed", "moved", "copied", "removed", "failed", "embedded")
        return {key: getattr(self, key) for key in keys} | {
            "seconds": round(self.seconds, 2), "interrupted": self.interrupted}


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32
    workers: int = max(1, min(8, (os.cpu_count() or 2) - 1))
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = False
    draft: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_timeout_s: float = DECODE_TIMEOUT_S
    dry_run: bool = False
    #: Index only these paths (relative, posix) of each root and leave its other files as
    #: they are (neither added nor forgotten); ``None``: every image.
    only: frozenset[str] | None = None


Progress = Callable[[IndexReport], None]


def index_folders(
    library: LibraryFolder,
    roots: Sequence[Path],
    embedders: Sequence[Embedder],
    options: IndexOptions = IndexOptions(),
    progress: Progress | None = None,
) -> IndexReport:
    """Index ``roots`` into ``library`` with every one of ``embedders``."""
    for root in roots:
        if not Path(root).is_dir():
            raise DreamsearchError(f"{root}: not a folder")
    with _writer_lock(library), Catalog(library.catalog_path) as catalog, _stop_on_interrupt() as stop:
        run = _Run(catalog, library, list(embedders), options, progress or (lambda report: None), stop)
        return run.execute([Path(r).resolve() for r in roots])


class _Run:
    def __init__(self, catalog: Catalog, library: LibraryFolder, embedders: list[Embedder],
                 options: IndexOptions, progress: Progress, stop: threading.Event) -> None:
        self.catalog, self.library, self.embedders = catalog, library, embedders
        self.options, self.progress, self.stop = options, progress, stop
        self.report = IndexReport()
        self.models: list[ModelInfo] = []
        self.batches_since_save = 0
        self.gone_hashes: set[str] = set()  # contents of files gone from disk: a reuse is a move

    def execute(self, roots: list[Path]) -> IndexReport:
        started = time.perf_counter()
        if not self.options.dry_run:
            self.models = [self.catalog.ensure_model(e.name, e.dim, e.fingerprint) for e in self.embedders]
        plans = [self._plan(root) for root in roots]
        self.report.missing_roots = [p for p in self.catalog.roots().values() if not Path(p).is_dir()]
        if not self.options.dry_run:
            with _pool(self.options.workers) as pool:
                for root_id, root, candidates, _gone in plans:
                    if self.stop.is_set():
                        break
                    self._add(pool, root_id, root, candidates)
            if not self.stop.is_set():
                for root_id, _root, _candidates, gone in plans:
                    self.catalog.remove_files(root_id, [relpath_to_db(g) for g in gone])
                    self.report.removed += len(gone)
            self._save_indexes()
        self.report.interrupted = self.stop.is_set()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _plan(self, root: Path) -> tuple[int, Path, list, list[str]]:
        """Scan ``root`` and split it into unchanged, candidate (new/changed) and gone files."""
        if self.options.dry_run:  # look, never write
            root_id = {path: i for i, path in self.catalog.roots().items()}.get(str(root), 0)
        else:
            root_id = self.catalog.ensure_root(root)
        stored = {relpath_from_db(k): v for k, v in self.catalog.files_under(root_id).items()}
        candidates, same = [], []
        seen = set()
        for found in scan(root, self.options.exclude, self.options.follow_symlinks, self._scan_error):
            seen.add(found.relpath)
            if self.options.only is not None and found.relpath not in self.options.only:
                continue
            self.report.found += 1
            known = stored.get(found.relpath)
            if known and (known.size, known.mtime_ns) == (found.size, found.mtime_ns):
                same.append((found, known))
                continue
            candidates.append((found, known))
            if self.options.dry_run:  # without hashing, every difference counts as new or changed
                self.report.new += known is None
                self.report.changed += known is not None
        candidates += self._lacking_vectors(same)
        gone = sorted(set(stored) - seen)
        if self.options.dry_run:
            self.report.removed += len(gone)
        self.gone_hashes |= {stored[g].content_hash for g in gone if stored[g].content_hash}
        return root_id, root, candidates, gone

    def _lacking_vectors(self, same: list) -> list:
        """Of the files unchanged on disk, those whose content lacks a vector of one of this
        run's models (a model added to an indexed folder); the rest count as unchanged.
        Files that failed before are not retried until they change."""
        hashes = [known.content_hash for _found, known in same if known.content_hash]
        complete = self.catalog.hashes_with_vectors(self.models, hashes) if self.models else set(hashes)
        lacking = [(found, known) for found, known in same if known.content_hash and known.content_hash not in complete]
        self.report.unchanged += len(same) - len(lacking)
        return lacking

    def _scan_error(self, path: str, reason: str) -> None:
        self.report.failures.append((path, reason))

    def _add(self, pool, root_id: int, root: Path, candidates: list) -> None:
        """Hash candidates; record copies/moves; decode, embed and commit the rest."""
        paths = [str(root / found.relpath) for found, _known in candidates]
        hashed = dict(zip(paths, _map(pool, hash_file, paths, chunksize=8)))
        known = self.catalog.hashes_with_vectors(self.models, [h.content_hash for h in hashed.values() if h.content_hash])
        reuse: list[FileEntry] = []
        to_decode: list[ScannedFile] = []
        duplicates: dict[str, list] = {}
        for found, previous in candidates:
            result: Hashed = hashed[str(root / found.relpath)]
            touched = previous is not None and previous.content_hash == result.content_hash
            if touched and result.content_hash in known:
                self.report.unchanged += 1  # new mtime, same bytes
                reuse.append(_entry(found, result.content_hash))
                continue
            if previous is None:
                self.report.new += 1
            elif not touched:
                self.report.changed += 1
            if result.content_hash is None:
                self._fail(root_id, found, result.path, result.error)
            elif result.content_hash in known:
                self._count_reuse(result.content_hash)
                reuse.append(_entry(found, result.content_hash))
            elif result.content_hash in duplicates:
                duplicates[result.content_hash].append(found)
            else:
                duplicates[result.content_hash] = []
                to_decode.append(found)
        for start in range(0, len(reuse), REUSE_BATCH):
            self.catalog.commit_batch(root_id, reuse[start : start + REUSE_BATCH])
        self.report.to_embed += len(to_decode)
        self._decode_and_embed(pool, root_id, root, to_decode)
        copies = [(found, h) for h, founds in duplicates.items() for found in founds]
        if copies and not self.stop.is_set():
            ok = self.catalog.hashes_with_vectors(self.models, [h for _f, h in copies])
            self.catalog.commit_batch(root_id, [_entry(found, h) for found, h in copies if h in ok])
            self.report.copied += sum(1 for _f, h in copies if h in ok)

    def _embed_lacking(self, good: list) -> dict[str, dict[str, np.ndarray]]:
        """Vectors for the decoded files, from each model that has none for their content
        yet: a model added to an indexed folder does not recompute the others."""
        vectors = {}
        for i, (embedder, model) in enumerate(zip(self.embedders, self.models)):
            have = self.catalog.hashes_with_vectors([model], [r.content_hash for r in good])
            todo = [r for r in good if r.content_hash not in have]
            if todo:
                vectors[embedder.name] = dict(zip((r.content_hash for r in todo),
                                                  embedder.embed(np.stack([r.pixels[i] for r in todo]))))
        return vectors

    def _count_reuse(self, content_hash: str) -> None:
        if content_hash in self.gone_hashes:
            self.report.moved += 1
        else:
            self.report.copied += 1

    def _fail(self, root_id: int, found, path: str, reason: str | None) -> None:
        reason = reason or "unknown error"
        self.report.failed += 1
        self.report.failures.append((path, reason))
        self.catalog.commit_batch(root_id, [FileEntry(relpath_to_db(found.relpath), found.size, found.mtime_ns, None, error=reason)])

    def _decode_and_embed(self, pool, root_id: int, root: Path, to_decode: list) -> None:
        preprocess = tuple(e.preprocess_spec for e in self.embedders)
        jobs = [DecodeJob(str(root / f.relpath), preprocess, self.options.max_pixels,
                          self.options.decode_timeout_s, self.options.draft) for f in to_decode]
        by_path = {str(root / f.relpath): f for f in to_decode}
        results = _map(pool, decode_file, jobs, chunksize=1)
        for batch in _batches(results, self.options.batch_size):
            good = [r for r in batch if r.error is None]
            for bad in (r for r in batch if r.error is not None):
                self._fail(root_id, by_path[bad.path], bad.path, bad.error)
            if good:
                vectors = self._embed_lacking(good)
                files = [_entry(by_path[r.path], r.content_hash, r) for r in good]
                self.catalog.commit_batch(root_id, files, vectors)
                self.report.embedded += len(good)
            self.progress(self.report)
            self.batches_since_save += 1
            if self.batches_since_save >= SAVE_INDEX_EVERY:
                self._save_indexes()
            if self.stop.is_set():
                return

    def _save_indexes(self) -> None:
        save_indexes(self.catalog, self.library.index_dir, self.models)
        self.batches_since_save = 0


def _entry(found, content_hash: str, decoded: Decoded | None = None) -> FileEntry:
    if decoded is None:
        return FileEntry(relpath_to_db(found.relpath), found.size, found.mtime_ns, content_hash)
    return FileEntry(relpath_to_db(found.relpath), found.size, found.mtime_ns, content_hash,
                     decoded.width, decoded.height, decoded.format)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _map(pool, function, items: list, chunksize: int) -> Iterator:
    """``pool.imap`` (ordered, streaming) or a plain map when decoding runs in-process."""
    if pool is None:
        return map(function, items)
    return pool.imap(function, items, chunksize=chunksize)


@contextmanager
def _pool(workers: int):
    if workers <= 0:
        yield None
        return
    # spawn: workers must not inherit torch's threads or CUDA state from this process.
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


@contextmanager
def _writer_lock(library: LibraryFolder):
    """One indexer per library at a time; readers are never blocked."""
    library.root.mkdir(parents=True, exist_ok=True)
    with open(library.root / ".writer.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DreamsearchError(f"another dreamsearch is indexing into {library.root}; try again when it ends") from None
        yield


@contextmanager
def _stop_on_interrupt():
    """First Ctrl-C sets the event (finish the batch, commit, save); a second one aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
