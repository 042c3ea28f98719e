"""Bring a library up to date with folders on disk: scan, diff, hash, decode, embed, commit.

The order is chosen so nothing is lost or redone:
1. scan every folder; files whose size and mtime match the catalog are skipped unread. A
   folder inside an indexed root joins that root (one file on disk is one file here);
2. new or changed files are hashed (in decode threads); a hash the catalog already has
   vectors for is a copy or a move and is recorded without decoding;
3. the rest are decoded in threads (JPEG draft, EXIF, modes; Pillow and hashlib release
   the GIL), embedded in batches by every model, and committed batch by batch: files,
   contents and vectors in one transaction, so a killed run loses at most the batch in
   flight;
4. only then are files gone from disk removed (a move keeps its vectors: its new path was
   recorded in step 2 before the old one goes), unless the folder looks unmounted: a
   folder that lost every file, or more than half of them, keeps them until ``prune``;
5. the FAISS indexes catch up from the catalog and are saved (also every few batches).
Ctrl-C stops after the current batch; a second Ctrl-C stops at once.

Decoding runs in threads, not processes, so the API works from a plain script (spawned
processes would re-run the caller's ``__main__``) and no worker can die and hang a run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamsearch.catalog import Catalog, FileEntry, ModelInfo, RootPlace, path_from_db, path_to_db
from dreamsearch.errors import DreamsearchError
from dreamsearch.images import DEFAULT_MAX_PIXELS
from dreamsearch.library import LibraryFolder
from dreamsearch.models.base import Embedder
from dreamsearch.scan import ScannedFile, scan
from dreamsearch.vector_index import save_indexes
from dreamsearch.workers import DECODE_TIMEOUT_S, DecodeJob, Decoded, Hashed, decode_file, hash_file

SAVE_INDEX_EVERY = 50  # batches
REUSE_BATCH = 500
#: A folder that loses more than this share of its indexed files in one run keeps them
#: (an unmounted drive or share looks like a folder whose photos were all deleted).
MAX_LOSS_WITHOUT_PRUNE = 0.5


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
    kept: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing_roots: list[str] = field(default_factory=list)
    #: ``(folder, files gone from disk, files indexed there)`` for folders whose gone files
    #: were kept because the folder looks unmounted (see ``IndexOptions.prune``).
    kept_folders: list[tuple[str, int, int]] = field(default_factory=list)

    def summary(self) -> dict:
        keys = ("found", "unchanged", "new", "changed", "moved", "copied", "removed", "kept", "failed", "embedded")
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
    #: Forget gone files even when a folder lost all or most of them in one run.
    prune: bool = False


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
    with library.writer_lock(), Catalog(library.catalog_path) as catalog, _stop_on_interrupt() as stop:
        run = _Run(catalog, library, list(embedders), options, progress or (lambda report: None), stop)
        return run.execute(outermost(Path(r).resolve() for r in roots))


def outermost(folders: Iterable[Path]) -> list[Path]:
    """``folders`` without those inside another one of them (each file is indexed once)."""
    unique = sorted(set(folders))
    return [f for f in unique if not any(f != other and f.is_relative_to(other) for other in unique)]


@dataclass
class _Plan:
    """One folder's share of a run: where its files go, what to read, what is gone."""

    place: RootPlace
    candidates: list
    gone: list[str]
    indexed: int  # files the catalog held under the folder before the run


class _Run:
    def __init__(self, catalog: Catalog, library: LibraryFolder, embedders: list[Embedder],
                 options: IndexOptions, progress: Progress, stop: threading.Event) -> None:
        self.catalog, self.library, self.embedders = catalog, library, embedders
        self.options, self.progress, self.stop = options, progress, stop
        self.report = IndexReport()
        self.models: list[ModelInfo] = []
        self.batches_since_save = 0
        self.gone_hashes: set[str] = set()  # contents of files gone from disk: a reuse is a move
        self.failed_contents: dict[str, str] = {}  # hash -> why it could not be decoded

    def execute(self, roots: list[Path]) -> IndexReport:
        started = time.perf_counter()
        if not self.options.dry_run:
            self.models = [self.catalog.ensure_model(e.name, e.dim, e.fingerprint) for e in self.embedders]
        plans = [self._plan(root) for root in roots]
        self.report.missing_roots = [p for p in self.catalog.roots().values() if not Path(p).is_dir()]
        if not self.options.dry_run:
            with _decoders(self.options.workers) as pool:
                for plan in plans:
                    if self.stop.is_set():
                        break
                    self._add(pool, plan.place, plan.candidates)
            if not self.stop.is_set():
                for plan in plans:
                    self._remove_gone(plan)
            self._save_indexes()
        self.report.interrupted = self.stop.is_set()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _plan(self, folder: Path) -> _Plan:
        """Scan ``folder`` and split it into unchanged, candidate (new/changed) and gone files."""
        if self.options.dry_run:  # look, never write
            place = self.catalog.find_root(folder) or RootPlace(0, folder, "")
        else:
            place = self.catalog.attach(folder)
        stored = {relpath: known for relpath, known in
                  ((path_from_db(k), v) for k, v in self.catalog.files_under(place.id).items())
                  if relpath.startswith(place.prefix)}
        candidates, same = [], []
        seen: set[str] = set()
        unreadable: list[str] = []  # folders that could not be listed: their files are not gone

        def scan_error(path: str, reason: str) -> None:
            """Recorded (``status --failed``), and nothing below it counts as gone."""
            relpath = place.prefix + os.path.relpath(path, folder)
            if os.path.relpath(path, folder) == "." or self.options.dry_run:
                self.report.failures.append((path, reason))
                return
            seen.add(relpath)
            unreadable.append(relpath + "/")
            self._fail(place.id, ScannedFile(relpath, 0, 0), path, f"cannot list or open: {reason}")

        for found in scan(folder, self.options.exclude, self.options.follow_symlinks, scan_error):
            relpath = place.prefix + found.relpath
            seen.add(relpath)
            if self.options.only is not None and found.relpath not in self.options.only:
                continue
            found = ScannedFile(relpath, found.size, found.mtime_ns)
            self.report.found += 1
            known = stored.get(relpath)
            if known and (known.size, known.mtime_ns) == (found.size, found.mtime_ns):
                same.append((found, known))
                continue
            candidates.append((found, known))
            if self.options.dry_run:  # without hashing, every difference counts as new or changed
                self.report.new += known is None
                self.report.changed += known is not None
        candidates += self._lacking_vectors(same)
        gone = sorted(g for g in set(stored) - seen if not g.startswith(tuple(unreadable)))
        plan = _Plan(place, candidates, gone, len(stored))
        if self.options.dry_run:
            self._remove_gone(plan)
        self.gone_hashes |= {stored[g].content_hash for g in gone if stored[g].content_hash}
        return plan

    def _remove_gone(self, plan: _Plan) -> None:
        """Forget files gone from disk, unless the folder lost so many in one run that it
        looks unmounted: then keep them and say so (``prune`` removes them anyway)."""
        if not plan.gone:
            return
        folder = str(plan.place.path / plan.place.prefix) if plan.place.prefix else str(plan.place.path)
        if not self.options.prune and len(plan.gone) > MAX_LOSS_WITHOUT_PRUNE * plan.indexed:
            self.report.kept += len(plan.gone)
            self.report.kept_folders.append((folder, len(plan.gone), plan.indexed))
            return
        if not self.options.dry_run:
            self.catalog.remove_files(plan.place.id, [path_to_db(g) for g in plan.gone])
        self.report.removed += len(plan.gone)

    def _lacking_vectors(self, same: list) -> list:
        """Of the files unchanged on disk, those whose content lacks a vector of one of this
        run's models (a model added to an indexed folder); the rest count as unchanged.
        Files that failed before are not retried until they change."""
        hashes = [known.content_hash for _found, known in same if known.content_hash]
        complete = self.catalog.hashes_with_vectors(self.models, hashes) if self.models else set(hashes)
        lacking = [(found, known) for found, known in same if known.content_hash and known.content_hash not in complete]
        self.report.unchanged += len(same) - len(lacking)
        return lacking

    def _add(self, pool: ThreadPoolExecutor | None, place: RootPlace, candidates: list) -> None:
        """Hash candidates; record copies/moves; decode, embed and commit the rest."""
        root_id, root = place.id, place.path
        paths = [str(root / found.relpath) for found, _known in candidates]
        hashed = dict(zip(paths, _map(pool, hash_file, paths, self._ahead)))
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
        self._decode_and_embed(pool, place, to_decode)
        if not self.stop.is_set():
            self._record_copies(root_id, root, [(found, h) for h, founds in duplicates.items() for found in founds])

    def _record_copies(self, root_id: int, root: Path, copies: list[tuple[ScannedFile, str]]) -> None:
        """Byte copies of files decoded in this run share their vector, or their failure."""
        ok = self.catalog.hashes_with_vectors(self.models, [h for _f, h in copies])
        self.catalog.commit_batch(root_id, [_entry(found, h) for found, h in copies if h in ok])
        self.report.copied += sum(1 for _f, h in copies if h in ok)
        for found, content_hash in copies:
            if content_hash in self.failed_contents:
                self._fail(root_id, found, str(root / found.relpath), self.failed_contents[content_hash])

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

    def _fail(self, root_id: int, found: ScannedFile, path: str, reason: str | None) -> None:
        reason = reason or "unknown error"
        self.report.failed += 1
        self.report.failures.append((path, reason))
        self.catalog.commit_batch(root_id, [FileEntry(path_to_db(found.relpath), found.size, found.mtime_ns, None, error=reason)])

    def _decode_and_embed(self, pool: ThreadPoolExecutor | None, place: RootPlace, to_decode: list) -> None:
        preprocess = tuple(e.preprocess_spec for e in self.embedders)
        jobs = [DecodeJob(str(place.path / f.relpath), preprocess, self.options.max_pixels,
                          self.options.decode_timeout_s, self.options.draft) for f in to_decode]
        by_path = {str(place.path / f.relpath): f for f in to_decode}
        results = _map(pool, decode_file, jobs, self._ahead, self.options.decode_timeout_s, _timed_out)
        for batch in _batches(results, self.options.batch_size):
            good = [r for r in batch if r.error is None]
            for bad in (r for r in batch if r.error is not None):
                if bad.content_hash:
                    self.failed_contents[bad.content_hash] = bad.error
                self._fail(place.id, by_path[bad.path], bad.path, bad.error)
            if good:
                vectors = self._embed_lacking(good)
                files = [_entry(by_path[r.path], r.content_hash, r) for r in good]
                self.catalog.commit_batch(place.id, files, vectors)
                self.report.embedded += len(good)
            self.progress(self.report)
            self.batches_since_save += 1
            if self.batches_since_save >= SAVE_INDEX_EVERY:
                self._save_indexes()
            if self.stop.is_set():
                return

    @property
    def _ahead(self) -> int:
        """Files in flight in the decode threads: enough to keep them busy, few enough
        that memory does not depend on the folder's size."""
        return 2 * max(1, self.options.workers)

    def _save_indexes(self) -> None:
        save_indexes(self.catalog, self.library.index_dir, self.models)
        self.batches_since_save = 0


def _entry(found, content_hash: str, decoded: Decoded | None = None) -> FileEntry:
    if decoded is None:
        return FileEntry(path_to_db(found.relpath), found.size, found.mtime_ns, content_hash)
    return FileEntry(path_to_db(found.relpath), found.size, found.mtime_ns, content_hash,
                     decoded.width, decoded.height, decoded.format)


def _timed_out(job: DecodeJob) -> Decoded:
    return Decoded(job.path, error=f"decoding took longer than {job.timeout_s:g} s")


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _map(pool: ThreadPoolExecutor | None, function: Callable, items: list, ahead: int,
         timeout_s: float | None = None, on_timeout: Callable | None = None) -> Iterator:
    """``function`` over ``items`` in order, at most a few items ahead of the consumer
    (memory stays flat however many items there are). An item not done ``timeout_s``
    after the consumer asked for it yields ``on_timeout(item)``; its thread is left to
    finish on its own."""
    if pool is None:
        yield from map(function, items)
        return
    pending: deque[tuple[object, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(function, item)))
        if len(pending) >= ahead:
            yield _result(*pending.popleft(), timeout_s, on_timeout)
    while pending:
        yield _result(*pending.popleft(), timeout_s, on_timeout)


def _result(item, future: Future, timeout_s: float | None, on_timeout: Callable | None):
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        if on_timeout is None:
            raise
        return on_timeout(item)


@contextmanager
def _decoders(workers: int) -> Iterator[ThreadPoolExecutor | None]:
    """Decode threads (``None``: decode in the calling thread)."""
    if workers <= 0:
        yield None
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="dreamsearch-decode")
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


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
