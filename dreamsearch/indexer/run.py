"""Bring a library up to date with folders on disk: one run of ``dreamsearch index``.

The order is chosen so nothing is lost or redone (docs/indexing.md has the diagram):
1. scan every folder; files whose size and mtime match the catalog are skipped unread. A
   folder inside an indexed root joins that root (one file on disk is one file here);
2. new or changed files stream through reading threads (``pipeline``): each is read
   once, hashed, and either recognised as a copy or move of indexed content (no decode)
   or decoded from the same bytes, a bounded number of files ahead of the model;
3. this thread embeds decoded files in batches with every model and commits each batch
   (files, contents, vectors) in one transaction, so a killed run loses at most the batch
   in flight, and the first batch is committed seconds after the start;
4. only then are files gone from disk removed (a move keeps its vectors: its new path was
   committed before the old one goes), unless the folder looks unmounted: a folder that
   lost every file, or more than half of them, keeps them until ``prune``;
5. the FAISS indexes catch up from the catalog and are saved (also every few batches).
Ctrl-C stops after the current batch (the model runs in its own thread, so the signal is
answered at once); a second Ctrl-C stops at once. No model is loaded unless a file needs
embedding.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dreamsearch.catalog import Catalog, FileEntry, ModelInfo, RootPlace, path_from_db, path_to_db
from dreamsearch.errors import DreamsearchError
from dreamsearch.images import DEFAULT_MAX_PIXELS, Preprocess
from dreamsearch.indexer.decoding import DECODE_TIMEOUT_S, Decoded, decode_bytes
from dreamsearch.indexer.pipeline import Candidate, Contents, FileProcessor, Kind, Outcome
from dreamsearch.indexer.reading import DEFAULT_MAX_FILE_SIZE
from dreamsearch.indexer.stream import Workers, ordered
from dreamsearch.library import LibraryFolder
from dreamsearch.scan import ScannedFile, scan
from dreamsearch.vector_index import save_indexes

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.base import Embedder

SAVE_INDEX_EVERY = 50  # batches
#: Files recorded without decoding (copies, moves, touched files) are committed this many
#: at a time, or after ``COMMIT_EVERY_S``, whichever comes first.
REUSE_BATCH = 500
COMMIT_EVERY_S = 2.0
#: A folder that loses more than this share of its indexed files in one run keeps them
#: (an unmounted drive or share looks like a folder whose photos were all deleted).
MAX_LOSS_WITHOUT_PRUNE = 0.5


class ModelSource(Protocol):
    """A model as the indexer needs it: known without loading (name, weights' fingerprint,
    input recipe), loaded only when a file needs embedding."""

    name: str
    fingerprint: str
    preprocess_spec: Preprocess

    def load(self) -> Embedder: ...


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
    #: New or changed files to read (known after each folder's scan) and read so far.
    to_read: int = 0
    read: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    #: Set the moment Ctrl-C is pressed: the batch in flight is being finished.
    stopping: bool = False
    kept: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing_roots: list[str] = field(default_factory=list)
    #: ``(folder, files gone from disk, files indexed there)`` for folders whose gone files
    #: were kept because the folder looks unmounted (see ``IndexOptions.prune``).
    kept_folders: list[tuple[str, int, int]] = field(default_factory=list)

    def summary(self) -> dict:
        keys = ("found", "unchanged", "new", "changed", "moved", "copied", "removed", "kept", "failed", "embedded",
                "read")
        return {key: getattr(self, key) for key in keys} | {
            "seconds": round(self.seconds, 2), "interrupted": self.interrupted}


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32
    #: CPU threads that read, hash and decode; 0 does it all in the calling thread.
    workers: int = max(1, min(8, (os.cpu_count() or 2) - 1))
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = False
    draft: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    decode_timeout_s: float = DECODE_TIMEOUT_S
    dry_run: bool = False
    #: Index only these paths (relative, posix) of each root and leave its other files as
    #: they are (neither added nor forgotten); ``None``: every image.
    only: frozenset[str] | None = None
    #: Forget gone files even when a folder lost all or most of them in one run.
    prune: bool = False
    #: Decode baseline JPEGs in batches on this device (``"cuda"``), the rest on the CPU
    #: threads. ``"cpu"`` runs the same batched path on torchvision's CPU decoder (tests,
    #: comparisons). ``None``: everything on the CPU threads.
    gpu_decode: str | None = None


Progress = Callable[[IndexReport], None]


def index_folders(
    library: LibraryFolder,
    roots: Sequence[Path],
    models: Sequence[ModelSource],
    options: IndexOptions = IndexOptions(),
    progress: Progress | None = None,
) -> IndexReport:
    """Index ``roots`` into ``library`` with every one of ``models`` (loaded embedders, or
    ``dreamsearch.models.prepare_model`` handles that load only if something needs it)."""
    for root in roots:
        if not Path(root).is_dir():
            raise DreamsearchError(f"{root}: not a folder")
    progress = progress or (lambda report: None)
    report = IndexReport()

    def on_first_interrupt() -> None:
        report.stopping = True
        progress(report)

    with (library.writer_lock(), Catalog(library.catalog_path) as catalog,
          _stop_on_interrupt(on_first_interrupt) as stop):
        run = _Run(catalog, library, list(models), options, progress, stop, report)
        return run.execute(outermost(Path(r).resolve() for r in roots))


def outermost(folders: Iterable[Path]) -> list[Path]:
    """``folders`` without those inside another one of them (each file is indexed once)."""
    unique = sorted(set(folders))
    return [f for f in unique if not any(f != other and f.is_relative_to(other) for other in unique)]


@dataclass
class _Plan:
    """One folder's share of a run: where its files go, what to read, what is gone."""

    place: RootPlace
    candidates: list[Candidate]
    gone: list[str]
    indexed: int  # files the catalog held under the folder before the run


@dataclass
class _Pending:
    """What one folder's stream has produced and not committed yet."""

    batch: list[Outcome] = field(default_factory=list)  # new contents, to embed
    files: list[FileEntry] = field(default_factory=list)  # recorded without decoding
    copies: dict[str, list[Outcome]] = field(default_factory=lambda: defaultdict(list))  # by awaited content
    since: float = field(default_factory=time.monotonic)


class _Run:
    def __init__(self, catalog: Catalog, library: LibraryFolder, sources: list[ModelSource], options: IndexOptions,
                 progress: Progress, stop: threading.Event, report: IndexReport) -> None:
        self.catalog, self.library, self.sources = catalog, library, sources
        self.options, self.progress, self.stop, self.report = options, progress, stop, report
        self.models: list[ModelInfo] = []
        self.embedders: list[Embedder | None] = [None] * len(sources)
        self.batches_since_save = 0
        self.gone_hashes: set[str] = set()  # contents of files gone from disk: a reuse is a move
        self.model_thread = Workers(1, "dreamsearch-model")
        self.gpu_decoder = None
        if options.gpu_decode and not options.dry_run:
            from dreamsearch.indexer.gpu_decode import JpegBatchDecoder

            self.gpu_decoder = JpegBatchDecoder(options.gpu_decode)

    def execute(self, roots: list[Path]) -> IndexReport:
        started = time.perf_counter()
        if not self.options.dry_run:
            self.models = [self._register(i) for i in range(len(self.sources))]
        plans = [self._plan(root) for root in roots]
        self.report.missing_roots = [p for p in self.catalog.roots().values() if not Path(p).is_dir()]
        if not self.options.dry_run:
            readers = Workers(self.options.workers, "dreamsearch-read") if self.options.workers > 0 else None
            try:
                for plan in plans:
                    if self.stop.is_set():
                        break
                    self._add(readers, plan)
            finally:
                if readers is not None:
                    readers.close()
                self.model_thread.close()
            if not self.stop.is_set():
                for plan in plans:
                    self._remove_gone(plan)
            self._save_indexes()
        self.report.interrupted = self.stop.is_set()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _register(self, i: int) -> ModelInfo:
        """The catalog's record of model ``i``. A model the library already holds with the
        same weights needs no loading; a new one is loaded to learn its vector size."""
        source = self.sources[i]
        known = self.catalog.model(source.name)
        if known is not None and known.fingerprint == source.fingerprint:
            return known
        dim = known.dim if known is not None else self.model_thread.call(self._load, i).dim
        return self.catalog.ensure_model(source.name, dim, source.fingerprint)  # refuses other weights

    # scan and diff ------------------------------------------------------------------

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
        plan = _Plan(place, [Candidate(f, known, str(place.path / f.relpath)) for f, known in candidates],
                     gone, len(stored))
        if self.options.dry_run:
            self._remove_gone(plan)
        self.gone_hashes |= {stored[g].content_hash for g in gone if stored[g].content_hash}
        return plan

    def _lacking_vectors(self, same: list) -> list:
        """Of the files unchanged on disk, those whose content lacks a vector of one of this
        run's models (a model added to an indexed folder); the rest count as unchanged.
        Files that failed before are not retried until they change."""
        hashes = [known.content_hash for _found, known in same if known.content_hash]
        complete = self.catalog.hashes_with_vectors(self.models, hashes) if self.models else set(hashes)
        lacking = [(found, known) for found, known in same if known.content_hash and known.content_hash not in complete]
        self.report.unchanged += len(same) - len(lacking)
        return lacking

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

    # read, decode, embed, commit ----------------------------------------------------

    def _add(self, readers: Workers | None, plan: _Plan) -> None:
        """Stream the folder's candidates through the reading threads; embed and commit
        as results arrive, in order."""
        self.report.to_read += len(plan.candidates)
        contents = Contents(self.catalog, self.models)
        processor = FileProcessor(
            contents, tuple(s.preprocess_spec for s in self.sources), self.options.max_file_size,
            self.options.max_pixels, self.options.draft, self.options.decode_timeout_s, self._gpu_route())
        pending = _Pending()
        outcomes = ordered(readers, processor, plan.candidates, self._ahead, self.options.decode_timeout_s,
                           processor.timed_out)
        try:
            for outcome in outcomes:
                self.report.read += 1
                self._take(plan.place, contents, pending, outcome)
                if len(pending.batch) >= self.options.batch_size:
                    self._commit(plan.place, contents, pending)
                elif len(pending.files) >= REUSE_BATCH or (
                        pending.files and time.monotonic() - pending.since > COMMIT_EVERY_S):
                    self._commit(plan.place, contents, pending)
                self.progress(self.report)
                if self.stop.is_set():
                    break
        finally:
            outcomes.close()
        self._commit(plan.place, contents, pending)  # the batch in flight, also after Ctrl-C
        self.progress(self.report)

    def _take(self, place: RootPlace, contents: Contents, pending: _Pending, outcome: Outcome) -> None:
        """Count one file's outcome and queue what it needs."""
        previous, content_hash = outcome.candidate.previous, outcome.content_hash
        if outcome.kind is Kind.SAME:
            self.report.unchanged += 1
        elif previous is None:
            self.report.new += 1
        elif previous.content_hash != content_hash:
            self.report.changed += 1
        if outcome.kind in (Kind.SAME, Kind.KNOWN):
            if outcome.kind is Kind.KNOWN:
                self._count_reuse(content_hash)
            pending.files.append(_entry(outcome.candidate.found, content_hash))
        elif outcome.kind is Kind.COPY:
            self._take_copy(place, contents, pending, outcome)
        elif outcome.kind is Kind.FAILED:
            self._failed(place, contents, pending, outcome, outcome.error)
        else:
            pending.batch.append(outcome)

    def _take_copy(self, place: RootPlace, contents: Contents, pending: _Pending, outcome: Outcome) -> None:
        """A byte copy of a content another file claimed: it shares that file's vectors or
        its failure, once that file's outcome is known."""
        content_hash = outcome.content_hash
        if contents.is_claimed(content_hash):
            pending.copies[content_hash].append(outcome)
        elif (reason := contents.failure(content_hash)) is not None:
            self._fail(place.id, outcome.candidate.found, outcome.candidate.path, reason)
        else:  # committed since it was read
            self.report.copied += 1
            pending.files.append(_entry(outcome.candidate.found, content_hash))

    def _failed(self, place: RootPlace, contents: Contents, pending: _Pending, outcome: Outcome, reason: str) -> None:
        self._fail(place.id, outcome.candidate.found, outcome.candidate.path, reason)
        if outcome.content_hash:
            contents.settle(outcome.content_hash, reason)
            for copy in pending.copies.pop(outcome.content_hash, []):
                self._fail(place.id, copy.candidate.found, copy.candidate.path, reason)

    def _commit(self, place: RootPlace, contents: Contents, pending: _Pending) -> None:
        """Embed the pending batch and commit it with the files recorded without decoding,
        and with the byte copies of its contents, in one transaction."""
        good = []
        for outcome in self._decode_on_device(pending.batch):
            if outcome.decoded.error:
                self._failed(place, contents, pending, outcome, outcome.decoded.error)
            else:
                good.append(outcome)
        files = pending.files + [_entry(o.candidate.found, o.content_hash, o.decoded) for o in good]
        copies = [c for o in good for c in pending.copies.pop(o.content_hash, [])]
        files += [_entry(c.candidate.found, c.content_hash) for c in copies]
        if files:
            vectors = self._embed_lacking(good) if good else None
            self.catalog.commit_batch(place.id, files, vectors)
        for outcome in good:
            contents.settle(outcome.content_hash)
        self.report.embedded += len(good)
        self.report.copied += len(copies)
        pending.batch, pending.files, pending.since = [], [], time.monotonic()
        if good:
            self.batches_since_save += 1
            if self.batches_since_save >= SAVE_INDEX_EVERY:
                self._save_indexes()

    def _embed_lacking(self, good: list[Outcome]) -> dict[str, dict[str, np.ndarray]]:
        """Vectors for the decoded files, from each model that has none for their content
        yet: a model added to an indexed folder does not recompute the others."""
        vectors = {}
        for i, (source, model) in enumerate(zip(self.sources, self.models)):
            have = self.catalog.hashes_with_vectors([model], [o.content_hash for o in good])
            todo = [o for o in good if o.content_hash not in have]
            if todo:
                pixels = np.stack([o.decoded.pixels[i] for o in todo])
                embedded = self.model_thread.call(self._embed, i, pixels)
                vectors[source.name] = dict(zip((o.content_hash for o in todo), embedded))
        return vectors

    def _embed(self, i: int, pixels: np.ndarray) -> np.ndarray:
        """In the model thread: the model is loaded the first time it is needed."""
        return self._load(i).embed(pixels)

    def _load(self, i: int) -> Embedder:
        if self.embedders[i] is None:
            self.embedders[i] = self.sources[i].load()
        return self.embedders[i]

    def _gpu_route(self) -> Callable[[bytes], str | None] | None:
        if self.gpu_decoder is None:
            return None
        from dreamsearch.indexer.gpu_decode import gpu_route

        return lambda data: gpu_route(data, self.options.max_pixels)

    def _decode_on_device(self, batch: list[Outcome]) -> list[Outcome]:
        """Decode the batch's FOR_GPU files on the device, in the model thread (one CUDA
        stream: see gpu_decode). A file the device cannot decode goes to the CPU decoder,
        which gives the exact reason if the file is really broken."""
        waiting = [o for o in batch if o.kind is Kind.FOR_GPU]
        if waiting:
            results = self.model_thread.call(self.gpu_decoder.decode, [o.data for o in waiting], self._recipes)
            for outcome, result in zip(waiting, results):
                if isinstance(result, str):
                    outcome.decoded = decode_bytes(outcome.candidate.path, outcome.data, self._recipes,
                                                   self.options.max_pixels, self.options.draft)
                else:
                    width, height, pixels = result
                    outcome.decoded = Decoded(width, height, "JPEG", pixels)
                outcome.data = b""
        return batch

    @property
    def _recipes(self) -> tuple[Preprocess, ...]:
        return tuple(s.preprocess_spec for s in self.sources)

    @property
    def _ahead(self) -> int:
        """Files read and not yet taken: two batches, so the threads keep decoding while
        the model embeds one; bounded, so memory does not depend on the folder's size."""
        return 2 * self.options.batch_size + 2 * max(1, self.options.workers)

    # bookkeeping --------------------------------------------------------------------

    def _count_reuse(self, content_hash: str) -> None:
        if content_hash in self.gone_hashes:
            self.report.moved += 1
        else:
            self.report.copied += 1

    def _fail(self, root_id: int, found: ScannedFile, path: str, reason: str | None) -> None:
        reason = reason or "unknown error"
        self.report.failed += 1
        self.report.failures.append((path, reason))
        self.catalog.commit_batch(root_id, [FileEntry(path_to_db(found.relpath), found.size, found.mtime_ns, None,
                                                      error=reason)])

    def _save_indexes(self) -> None:
        save_indexes(self.catalog, self.library.index_dir, self.models)
        self.batches_since_save = 0


def _entry(found: ScannedFile, content_hash: str, decoded: Decoded | None = None) -> FileEntry:
    if decoded is None:
        return FileEntry(path_to_db(found.relpath), found.size, found.mtime_ns, content_hash)
    return FileEntry(path_to_db(found.relpath), found.size, found.mtime_ns, content_hash,
                     decoded.width, decoded.height, decoded.format)


@contextmanager
def _stop_on_interrupt(on_first: Callable[[], None]) -> Iterator[threading.Event]:
    """First Ctrl-C sets the event (finish the batch, commit, save) and says so through
    ``on_first``; a second one aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
