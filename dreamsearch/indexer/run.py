"""Bring a library up to date with folders on disk: one run of ``dreamsearch index``.

The order is chosen so nothing is lost or redone (docs/indexing.md has the diagram):
1. each folder is scanned in the thread that feeds the readers; files whose size, mtime,
   inode, device and ctime all match the catalog are skipped unread (``file_state``), as
   are failed files, unless their failure can pass (``failures``). A folder inside an
   indexed root joins that root (one file on disk is one file here);
2. new or changed files stream, as the scan finds them, through reading threads
   (``pipeline``): each is read once, hashed, and either recognised as a copy or move of
   indexed content (no decode) or decoded from the same bytes, a bounded number of files
   ahead of the model (with ``engine="ray"``, Ray tasks and actors do this and the
   embedding, and send back outcomes with vectors: ``ray_engine``);
3. this thread embeds decoded files in batches with every model and commits each batch
   (files, contents, vectors) in one transaction, so a killed run loses at most the batch
   in flight, and the first batch is committed seconds after the start;
4. only then are files gone from disk removed (a move keeps its vectors: its new path was
   committed before the old one goes), unless the folder looks unmounted: a folder that
   lost every file, or more than half of them, keeps them until ``prune``;
5. the FAISS indexes catch up from the catalog and are saved (also during the run: see
   ``SaveSchedule``).
On a CPU the model takes a few seconds of images at a time (``pace``), so the first commit
comes as soon as one image is embedded and Ctrl-C ends the run within seconds: the model
call in flight finishes, what is embedded is committed, the rest is left for the next run
(the model runs in its own thread, so the signal is heard at once); a second Ctrl-C stops
at once. No model is loaded unless a file needs embedding.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dreamsearch.catalog import Catalog, FileEntry, ModelInfo, RootPlace, StoredFile, path_from_db, path_to_db
from dreamsearch.decoding import DECODE_TIMEOUT_S, Decoded, TimeLimitExceeded, decode_bytes, time_limit, too_slow
from dreamsearch.defaults import usable_cores
from dreamsearch.errors import DreamsearchError
from dreamsearch.failures import TRANSIENT, TRANSIENT_TRIES, failure_kind
from dreamsearch.file_state import unchanged
from dreamsearch.images import DEFAULT_MAX_PIXELS, Preprocess
from dreamsearch.indexer.pace import DEFAULT_BATCH, Pace
from dreamsearch.indexer.pipeline import Candidate, Claims, Contents, FileProcessor, Kind, Outcome
from dreamsearch.indexer.stream import Stalled, Workers, ordered
from dreamsearch.layout import LibraryLayout
from dreamsearch.reading import DEFAULT_MAX_FILE_SIZE
from dreamsearch.scan import ScannedFile, scan
from dreamsearch.vector_index import save_indexes

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder
    from dreamsearch.indexer.ray_engine import RayEngine
    from dreamsearch.models.embedder import Embedder

#: A run saves its FAISS indexes as it goes (so the next start after a kill replays less of
#: the catalog's log) at most this often, and spends at most ``SAVE_INDEX_SHARE`` of its
#: time on it: each save rewrites the whole index file (11.6 s at 2M vectors), and saving
#: every 50 batches made one writer commit 494 files/s instead of 4,129 at 100k 1792-d
#: vectors (``benchmarks/commit_rate.py --save``).
SAVE_INDEX_EVERY_S = 60.0
SAVE_INDEX_SHARE = 0.1
#: Files recorded without decoding (copies, moves, touched files) are committed this many
#: at a time, or after ``COMMIT_EVERY_S``, whichever comes first.
REUSE_BATCH = 500
COMMIT_EVERY_S = 2.0
#: A folder whose files time out this many times in a row stopped answering (a hung drive
#: or share): the run stops reading it rather than wait a minute per file.
MAX_TIMEOUTS_IN_A_ROW = 3
#: A folder that loses more than this share of its indexed files in one run keeps them
#: (an unmounted drive or share looks like a folder whose photos were all deleted).
MAX_LOSS_WITHOUT_PRUNE = 0.5


class SaveSchedule:
    """When the next save of the indexes is due: ``SAVE_INDEX_EVERY_S`` after the last one,
    or ten times as long as it took, whichever is later."""

    def __init__(self) -> None:
        self._next = time.monotonic() + SAVE_INDEX_EVERY_S

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def saved(self, seconds: float) -> None:
        self._next = time.monotonic() + max(SAVE_INDEX_EVERY_S, seconds / SAVE_INDEX_SHARE)


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
    #: Files decoded and waiting for the model.
    waiting: int = 0
    #: Folders whose scan has not ended: while above 0, ``to_read`` and ``to_embed`` grow.
    scanning: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    #: Set the moment Ctrl-C is pressed: the model call in flight is being finished.
    stopping: bool = False
    kept: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing_roots: list[str] = field(default_factory=list)
    #: ``(folder, files gone from disk, files indexed there)`` for folders whose gone files
    #: were kept because the folder looks unmounted (see ``IndexOptions.prune``).
    kept_folders: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def to_embed(self) -> int:
        """The work of the run, in images: those embedded, those waiting for the model, and
        those not read yet (a file read later may turn out a copy, and not count any more).
        Files already indexed, copies and moves are not counted."""
        return self.embedded + self.waiting + self.to_read - self.read

    def summary(self) -> dict[str, object]:
        keys = (
            "found",
            "unchanged",
            "new",
            "changed",
            "moved",
            "copied",
            "removed",
            "kept",
            "failed",
            "embedded",
            "read",
        )
        return {key: getattr(self, key) for key in keys} | {
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class IndexOptions:
    #: Images per commit. ``None``: on a CPU, as many as the model embeds in about 5 s
    #: (the first one alone, so the first commit comes fast: ``pace``); on CUDA, with a
    #: compiled model or with the Ray engine, 32. Given or not, a CPU model (uncompiled)
    #: takes about 5 s of images at a time, so a stop is answered within seconds.
    batch_size: int | None = None
    #: CPU threads that read, hash and decode; 0 does it all in the calling thread. One per
    #: core (at most 8): with one fewer, 2 cores kept only ~1.35 busy while the model waited
    #: for pictures, and 2 reading threads cut a first index's wall time by 17% (issue 23).
    #: The model's OpenMP threads sleep while they wait (``OMP_WAIT_POLICY``), so the
    #: threads share the cores rather than fight for them.
    workers: int = field(default_factory=lambda: max(1, min(8, usable_cores())))
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
    #: Read every failed file again, also those whose failure is permanent or came back
    #: ``TRANSIENT_TRIES`` runs in a row (by default only transient ones are retried).
    retry_failed: bool = False
    #: Decode baseline JPEGs in batches on this device (``"cuda"``), the rest on the CPU
    #: threads. ``"auto"``: on the models' device when that is CUDA (measured 2.6x faster
    #: end to end on an H100, docs/indexing.md). ``"cpu"`` runs the same batched path on
    #: torchvision's CPU decoder (tests, comparisons). ``None``: everything on the CPU threads.
    gpu_decode: str | None = "auto"
    #: Where files are read, decoded and embedded: ``"local"`` (threads of this process) or
    #: ``"ray"`` (a Ray cluster; this process still scans and commits, docs/scale-out.md).
    engine: str = "local"
    #: The Ray cluster to join (``"auto"``, ``"HOST:PORT"``); ``None``: ``$RAY_ADDRESS`` or
    #: a cluster of this machine started for the run.
    ray_address: str | None = None


Progress = Callable[[IndexReport], None]


def index_folders(
    library: LibraryLayout,
    roots: Sequence[Path],
    models: Sequence[ModelSource],
    options: IndexOptions = IndexOptions(),
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    on_picture: Callable[[ScannedFile, Image.Image], None] | None = None,
) -> IndexReport:
    """Index ``roots`` into ``library`` with every one of ``models`` (loaded embedders, or
    ``dreamsearch.models.PendingModel`` handles that load only if something needs it).
    Setting ``stop`` ends the run as a first Ctrl-C does (what the model embedded is
    committed, the report says ``interrupted``). ``on_picture(file, picture)`` is called in a reading
    thread with each picture decoded on the CPU (not with the Ray engine)."""
    for root in roots:
        if not Path(root).is_dir():
            raise DreamsearchError(f"{root}: not a folder")
    check_engine(options)
    progress = progress or (lambda report: None)
    report = IndexReport()

    def on_first_interrupt() -> None:
        report.stopping = True
        progress(report)

    with (
        library.writer_lock(),
        Catalog(library.catalog_path) as catalog,
        _stop_on_interrupt(on_first_interrupt, stop) as stop,
    ):
        run = _Run(catalog, library, list(models), options, progress, stop, report, on_picture)
        return run.execute(outermost(Path(r).resolve() for r in roots))


def check_engine(options: IndexOptions) -> None:
    """Refuse engine settings that cannot work (Ray not installed, ...), before anything
    is opened or created."""
    if options.engine not in ("local", "ray"):
        raise DreamsearchError(f"unknown engine {options.engine!r}: use 'local' or 'ray'")
    if options.engine == "ray" and not options.dry_run:
        if options.gpu_decode not in (None, "auto"):
            raise DreamsearchError("--gpu-decode is for the local engine: with --engine ray, CPU tasks decode")
        from dreamsearch.indexer.ray_engine import require_ray

        require_ray()


def outermost(folders: Iterable[Path]) -> list[Path]:
    """``folders`` without those inside another one of them (each file is indexed once)."""
    unique = sorted(set(folders))
    return [f for f in unique if not any(f != other and f.is_relative_to(other) for other in unique)]


@dataclass
class _Plan:
    """One folder's share of a run, filled in while its scan streams: where its files go,
    what the catalog held there and, once the scan is done, what is gone."""

    place: RootPlace
    folder: Path
    stored: dict[str, StoredFile]
    seen: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)  # folders that could not be listed
    scan_errors: list[tuple[str, str, str]] = field(default_factory=list)  # (relpath, path, reason)
    unchanged: int = 0
    gone: list[str] | None = None  # None until the scan is done
    stopped_reading: str | None = None  # why the run gave up on the folder

    @property
    def complete(self) -> bool:
        """Scanned to the end and read without giving up: gone files may be removed."""
        return self.gone is not None and self.stopped_reading is None


@dataclass
class _Pending:
    """What one folder's stream has produced and not committed yet."""

    batch: list[Outcome] = field(default_factory=list)  # new contents, to embed
    files: list[FileEntry] = field(default_factory=list)  # recorded without decoding
    copies: dict[str, list[Outcome]] = field(default_factory=lambda: defaultdict(list))  # by awaited content
    since: float = field(default_factory=time.monotonic)


class _Run:
    """One run: the consumer end of the pipeline (this thread), the model thread, and the
    bookkeeping that keeps the catalog and the report right."""

    def __init__(
        self,
        catalog: Catalog,
        library: LibraryLayout,
        sources: list[ModelSource],
        options: IndexOptions,
        progress: Progress,
        stop: threading.Event,
        report: IndexReport,
        on_picture: Callable[[ScannedFile, Image.Image], None] | None = None,
    ) -> None:
        self.catalog, self.library, self.sources = catalog, library, sources
        self.options, self.progress, self.stop, self.report = options, progress, stop, report
        self.on_picture = on_picture
        self.recipes = tuple(s.preprocess_spec for s in sources)
        self.models: list[ModelInfo] = []
        self.embedders: list[Embedder | None] = [None] * len(sources)
        self.saves = SaveSchedule()
        self.pace = Pace()
        self.paced: bool | None = None  # decided when the first file waits for the model
        self.reused: list[str] = []  # contents recorded as copies or moves (a move if its old path is gone)
        self.replaced: set[int] = set()  # contents whose files changed: dropped at the end if orphaned
        self.model_thread = Workers(1, "dreamsearch-model")  # closed at the end of execute
        self.readers: Workers | None = None
        self.gpu_decoder: JpegBatchDecoder | None = None
        self.gpu_decoder_chosen = False
        self.gpu_decoder_lock = threading.Lock()
        self.cluster: RayEngine | None = None

    def execute(self, roots: list[Path]) -> IndexReport:
        started = time.perf_counter()
        try:
            if self.options.dry_run:
                self._look(roots)
            else:
                self._index(roots)
        finally:
            self.model_thread.close()
            if self.readers is not None:
                self.readers.close()
            if self.cluster is not None:
                self.cluster.close()
        self.report.missing_roots = [p for p in self.catalog.roots().values() if not Path(p).is_dir()]
        self.report.interrupted = self.stop.is_set()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _look(self, roots: list[Path]) -> None:
        """``dry_run``: scan and count, never write. Without reading, every difference
        counts as new or changed."""
        for root in roots:
            plan = self._plan(self.catalog.find_root(root) or RootPlace(0, root, ""), root)
            for candidate in self._candidates(plan):
                self.report.new += candidate.previous is None
                self.report.changed += candidate.previous is not None
            self.report.unchanged += plan.unchanged
            self.report.failures += [(path, reason) for _relpath, path, reason in plan.scan_errors]
            self._remove_gone(plan)

    def _index(self, roots: list[Path]) -> None:
        self.models = [self._register(i) for i in range(len(self.sources))]
        if self.options.engine == "ray":
            from dreamsearch.indexer.ray_engine import RayEngine

            self.cluster = RayEngine.for_run(
                self.options.ray_address, self.library.catalog_path, self.models, self.sources, self.options
            )
        else:
            if self.options.gpu_decode not in (None, "auto"):
                self._batched_decoder()  # asked for by name: fail now if that device is missing
            # Off the main thread there is no SIGALRM, so "in this thread" gets one timed thread.
            workers = self.options.workers or (0 if threading.current_thread() is threading.main_thread() else 1)
            self.readers = Workers(workers, "dreamsearch-read") if workers else None
        sweep_everything = self.catalog.defer_orphans()
        plans = []
        self.report.scanning = len(roots)
        for i, root in enumerate(roots):
            if self.stop.is_set():
                break
            plans.append(self._plan(self.catalog.attach(root), root))
            self._add(plans[-1], later=len(roots) - i - 1)
        self.catalog.drop_orphans(None if sweep_everything else self.replaced)
        if not self.stop.is_set():
            found_again = frozenset(self.reused)
            for plan in plans:
                if plan.complete:
                    self._remove_gone(plan, found_again)
        gone_hashes = {plan.stored[g].content_hash for plan in plans for g in plan.gone or ()}
        moved = sum(1 for content_hash in self.reused if content_hash in gone_hashes)
        self.report.moved += moved
        self.report.copied -= moved
        self._save_indexes()

    def _register(self, i: int) -> ModelInfo:
        """The catalog's record of model ``i``. A model the library already holds with the
        same weights needs no loading; a new one is loaded to learn its vector size. A
        library made before whole-file fingerprints names the same weights by their legacy
        fingerprint: it is re-stamped."""
        source = self.sources[i]
        known = self.catalog.model(source.name)
        if (
            known is not None
            and known.fingerprint != source.fingerprint
            and known.fingerprint == getattr(source, "legacy_fingerprint", None)
        ):
            known = self.catalog.restamp_model(source.name, known.fingerprint, source.fingerprint)
        if known is not None and known.fingerprint == source.fingerprint:
            return known
        dim = known.dim if known is not None else self.model_thread.call(self._load, i).dim
        return self.catalog.ensure_model(source.name, dim, source.fingerprint)  # refuses other weights

    # scan and diff ------------------------------------------------------------------

    def _plan(self, place: RootPlace, folder: Path) -> _Plan:
        stored = {
            relpath: known
            for relpath, known in ((path_from_db(k), v) for k, v in self.catalog.files_under(place.id).items())
            if relpath.startswith(place.prefix)
        }
        return _Plan(place, folder, stored)

    def _candidates(self, plan: _Plan, watch: _ScanWatch | None = None) -> Iterator[Candidate]:
        """Scan the plan's folder and yield its new and changed files as they are found,
        then those whose content lacks a vector of one of the run's models; finally note
        what is gone. Runs in the stream's feeder thread, so it only reads the catalog and
        touches only the report fields no other thread writes (``found``, ``to_read``)."""
        place, folder = plan.place, plan.folder
        same = []

        def scan_error(path: str, reason: str) -> None:
            """Recorded (``status --failed``), and nothing below it counts as gone."""
            relpath = place.prefix + os.path.relpath(path, folder)
            if os.path.relpath(path, folder) == ".":  # the folder itself: none of its files is gone
                plan.unreadable.append(place.prefix)
            else:
                plan.seen.add(relpath)
                plan.unreadable.append(relpath + "/")
            plan.scan_errors.append((relpath, path, reason))

        watch = watch or _ScanWatch(0)
        for found in scan(folder, self.options.exclude, self.options.follow_symlinks, scan_error, watch.step):
            watch.pause()  # until the scan's next step, the time is the consumer's
            if self.stop.is_set():
                return
            relpath = place.prefix + found.relpath
            plan.seen.add(relpath)
            if self.options.only is not None and found.relpath not in self.options.only:
                continue
            if place.prefix:
                found = replace(found, relpath=relpath)
            self.report.found += 1
            known = plan.stored.get(relpath)
            if known and unchanged(known, found) and not self._worth_retrying(known):
                same.append((found, known))
                continue
            self.report.to_read += 1
            yield Candidate(found, known, str(place.path / relpath))
        watch.pause()
        for found, known in self._lacking_vectors(plan, same):
            self.report.to_read += 1
            yield Candidate(found, known, str(place.path / found.relpath))
        plan.gone = sorted(g for g in set(plan.stored) - plan.seen if not g.startswith(tuple(plan.unreadable)))

    def _worth_retrying(self, known: StoredFile) -> bool:
        """A failed file whose cause may have passed (any failed file with ``retry_failed``)."""
        return known.status == "failed" and (
            self.options.retry_failed or (known.failure_kind == TRANSIENT and known.failed_runs < TRANSIENT_TRIES)
        )

    def _lacking_vectors(
        self, plan: _Plan, same: list[tuple[ScannedFile, StoredFile]]
    ) -> list[tuple[ScannedFile, StoredFile]]:
        """Of the files unchanged on disk, those whose content lacks a vector of one of this
        run's models (a model added to an indexed folder); the rest count as unchanged.
        Files that failed before are not retried until they change."""
        hashes = [known.content_hash for _found, known in same if known.content_hash]
        complete = self.catalog.hashes_with_vectors(self.models, hashes) if self.models else set(hashes)
        lacking = [(found, known) for found, known in same if known.content_hash and known.content_hash not in complete]
        plan.unchanged = len(same) - len(lacking)
        return lacking

    def _remove_gone(self, plan: _Plan, found_again: frozenset[str] = frozenset()) -> None:
        """Forget files gone from disk, unless the folder lost so many in one run that it
        looks unmounted: then keep them and say so (``prune`` removes them anyway). Files
        whose content this run found at another path (``found_again``) moved: a renamed
        album is not a loss."""
        if not plan.gone:
            return
        folder = str(plan.folder)
        lost = sum(plan.stored[g].content_hash not in found_again for g in plan.gone)
        if not self.options.prune and lost > MAX_LOSS_WITHOUT_PRUNE * len(plan.stored):
            self.report.kept += len(plan.gone)
            self.report.kept_folders.append((folder, len(plan.gone), len(plan.stored)))
            return
        if not self.options.dry_run:
            self.catalog.remove_files(plan.place.id, [path_to_db(g) for g in plan.gone])
        self.report.removed += len(plan.gone)

    # read, decode, embed, commit ----------------------------------------------------

    def _add(self, plan: _Plan, later: int) -> None:
        """Stream the folder's files through the reading threads (or the Ray cluster) as
        the scan finds them; embed and commit as results arrive. ``later``: folders after
        this one (their scans have not started)."""
        contents, outcomes = self._stream(plan)
        pending = _Pending()
        in_a_row = 0
        try:
            for outcome in outcomes:
                self.report.read += 1
                self._take(plan.place, contents, pending, outcome)
                if pending.batch and len(pending.batch) >= self._batch_size():
                    self._progress(plan, later)  # shown while the model works
                    self._commit(plan.place, contents, pending)
                elif len(pending.files) >= REUSE_BATCH or (
                    pending.files and time.monotonic() - pending.since > COMMIT_EVERY_S
                ):
                    self._commit(plan.place, contents, pending, embed=False)
                self._progress(plan, later)
                in_a_row = in_a_row + 1 if outcome.gave_up else 0
                if in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
                    plan.stopped_reading = (
                        f"stopped reading this folder: {in_a_row} files in a row took longer "
                        f"than {self.options.decode_timeout_s:g} s (a hung drive or share?)"
                    )
                    self.report.failures.append((str(plan.folder), plan.stopped_reading))
                if self.stop.is_set() or plan.stopped_reading:
                    break
        except Stalled as exc:  # its thread is left behind; the run, and the writer lock, go on
            plan.stopped_reading = f"stopped reading this folder: {exc}"
            self.report.failures.append((str(plan.folder), plan.stopped_reading))
        finally:
            outcomes.close()
        self._commit(plan.place, contents, pending)  # after Ctrl-C: only what the model already embedded
        for copy in (c for waiting in pending.copies.values() for c in waiting):
            # Its original was read again by a retried Ray task and had changed: not recorded,
            # so the next run indexes it.
            self.report.failures.append(
                (
                    copy.candidate.path,
                    "not indexed in this run: the file it copies changed while being read; the next run indexes it",
                )
            )
        for relpath, path, reason in plan.scan_errors:
            if relpath == plan.place.prefix + ".":  # the folder itself: nothing to record under it
                self.report.failures.append((path, reason))
            else:
                self._fail(plan.place.id, ScannedFile(relpath, 0, 0), path, f"cannot list or open: {reason}")
        self.report.unchanged += plan.unchanged
        self._progress(plan, later)

    def _progress(self, plan: _Plan, later: int) -> None:
        """Tell the caller, with the folders still being scanned: this one until its scan
        ended (or the run gave up on it), and those after it."""
        self.report.scanning = later + (plan.gone is None and plan.stopped_reading is None)
        self.progress(self.report)

    def _stream(self, plan: _Plan) -> tuple[Claims, Generator[Outcome, None, None]]:
        """The run's claims on contents, and the outcomes of the folder's candidates: from
        this process's reading threads, in order, or from the Ray cluster."""
        if self.cluster is not None:
            return self.cluster.contents, self.cluster.outcomes(self._candidates(plan))
        contents = Contents(self.catalog, self.models)
        processor = FileProcessor(
            contents,
            self.recipes,
            self.options.max_file_size,
            self.options.max_pixels,
            self.options.draft,
            self.options.decode_timeout_s,
            self._gpu_route(),
            self.on_picture,
        )
        watch = _ScanWatch(self.options.decode_timeout_s)
        return contents, ordered(
            self.readers,
            processor,
            self._candidates(plan, watch),
            self._ahead,
            self.options.decode_timeout_s,
            lambda candidate: self._gave_up(contents, candidate),
            watch.stalled,
        )

    def _gave_up(self, contents: Claims, candidate: Candidate) -> Outcome:
        """The outcome of a file whose thread did not answer in time (its copies fail too)."""
        reason = too_slow(self.options.decode_timeout_s)
        return Outcome(candidate, Kind.FAILED, contents.abandon(candidate.path, reason), error=reason, gave_up=True)

    def _take(self, place: RootPlace, contents: Claims, pending: _Pending, outcome: Outcome) -> None:
        """Queue what one file's outcome needs (a byte copy waits for its original)."""
        if outcome.kind is Kind.COPY:
            self._take_copy(place, contents, pending, outcome)
            return
        if outcome.kind in (Kind.DECODED, Kind.FOR_GPU):  # counted when embedded (or failed): _embed_batch
            pending.batch.append(outcome)
            self.report.waiting = len(pending.batch)
            return
        self._count_found(outcome)
        if outcome.kind in (Kind.SAME, Kind.KNOWN):
            if outcome.kind is Kind.KNOWN:
                self.report.copied += 1  # or moved: settled at the end, once all gone files are known
                self.reused.append(outcome.hash)
            pending.files.append(_entry(outcome.candidate.found, outcome.hash))
        else:
            assert outcome.error is not None  # a failure says why
            self._failed(place, contents, pending, outcome, outcome.error)

    def _take_copy(self, place: RootPlace, contents: Claims, pending: _Pending, outcome: Outcome) -> None:
        """A byte copy of a content another file claimed: it shares that file's vectors or
        its failure, once that file's outcome is known."""
        content_hash = outcome.hash
        if contents.is_claimed(content_hash):
            pending.copies[content_hash].append(outcome)
            return
        self._count_found(outcome)
        if (reason := contents.failure(content_hash)) is not None:
            self._fail(place.id, outcome.candidate.found, outcome.candidate.path, reason)
        else:  # committed since it was read
            self.report.copied += 1
            pending.files.append(_entry(outcome.candidate.found, content_hash))

    def _failed(self, place: RootPlace, contents: Claims, pending: _Pending, outcome: Outcome, reason: str) -> None:
        """Record a file that failed, and the byte copies waiting for it."""
        self._fail(place.id, outcome.candidate.found, outcome.candidate.path, reason)
        if not outcome.content_hash:
            contents.release(outcome.candidate.path)  # a retried Ray task: it may have claimed before
        else:
            contents.settle(outcome.content_hash, reason)
            for copy in pending.copies.pop(outcome.content_hash, []):
                self._count_found(copy)
                self._fail(place.id, copy.candidate.found, copy.candidate.path, reason)

    def _commit(self, place: RootPlace, contents: Claims, pending: _Pending, embed: bool = True) -> None:
        """Commit the files recorded without decoding and, with ``embed``, the batch (what
        of it is embedded: see ``_embed_batch``) and the byte copies of its contents, in one
        transaction."""
        good, vectors = self._embed_batch(place, contents, pending) if embed else ([], {})
        copies = [c for o in good for c in pending.copies.pop(o.hash, [])]
        files = pending.files + [_entry(o.candidate.found, o.hash, o.decoded) for o in good]
        files += [_entry(c.candidate.found, c.hash) for c in copies]
        lost: dict[str, str] = {}
        if files:
            lost = self._record(place, files, vectors if good else None)
        for outcome in good:
            contents.settle(outcome.hash, lost.get(path_to_db(outcome.candidate.found.relpath)))
        for copy in copies:
            self._count_found(copy)
        self.report.embedded += sum(path_to_db(o.candidate.found.relpath) not in lost for o in good)
        self.report.copied += sum(path_to_db(c.candidate.found.relpath) not in lost for c in copies)
        pending.files, pending.since = [], time.monotonic()
        self.report.waiting = len(pending.batch)
        if good and self.saves.due():
            self._save_indexes()

    def _record(
        self, place: RootPlace, files: list[FileEntry], vectors: dict[str, dict[str, np.ndarray]] | None
    ) -> dict[str, str]:
        """Commit ``files`` and ``vectors`` in one transaction. An unexpected error (a bug, a
        value SQLite cannot hold) costs only the file that causes it: the batch is committed
        again file by file, and a file that fails alone is recorded as failed with the error.
        Returns ``{relpath: reason}`` of those. The catalog's own errors (a full disk, a
        damaged catalog) are not a file's fault: they stop the run."""
        try:
            self.replaced |= self.catalog.commit_batch(place.id, files, vectors, drop_orphans=False)
            return {}
        except DreamsearchError:
            raise
        except Exception:  # noqa: BLE001 - retried file by file below, each error kept
            pass
        lost = {}
        for entry in files:
            own = {
                name: {h: v for h, v in by_hash.items() if h == entry.content_hash}
                for name, by_hash in (vectors or {}).items()
            }
            try:
                self.replaced |= self.catalog.commit_batch(place.id, [entry], own, drop_orphans=False)
            except DreamsearchError:
                raise
            except Exception as exc:  # noqa: BLE001 - this file's own fault: recorded, the run goes on
                lost[entry.relpath] = f"could not be recorded: {type(exc).__name__}: {exc}".splitlines()[0]
                self._fail(
                    place.id,
                    ScannedFile(
                        path_from_db(entry.relpath),
                        entry.size,
                        entry.mtime_ns,
                        entry.inode,
                        entry.device,
                        entry.ctime_ns,
                    ),
                    str(place.path / path_from_db(entry.relpath)),
                    lost[entry.relpath],
                )
        return lost

    def _embed_batch(
        self, place: RootPlace, contents: Claims, pending: _Pending
    ) -> tuple[list[Outcome], dict[str, dict[str, np.ndarray]]]:
        """The batch's files that decode, embedded a step at a time (``_step_size``), and
        their vectors by model. After Ctrl-C (or ``stop``) no model call starts: the files
        not embedded yet are left for the next run (their claims reopened, the byte copies
        waiting for them not recorded), so a stop waits for one step, not for the batch."""
        todo, pending.batch = pending.batch, []
        good: list[Outcome] = []
        vectors: dict[str, dict[str, np.ndarray]] = {source.name: {} for source in self.sources}
        while todo and not (self.stop.is_set() and todo[0].vectors is None):
            size = self._step_size()
            step, todo = todo[:size], todo[size:]
            decoded = []
            for outcome in self._decode_on_device(step):
                self._count_found(outcome)
                if outcome.picture.error:
                    self._failed(place, contents, pending, outcome, outcome.picture.error)
                else:
                    decoded.append(outcome)
            for name, found in self._embed_lacking(decoded).items():
                vectors[name].update(found)
            good += decoded
        for outcome in todo:
            contents.release(outcome.candidate.path)
            pending.copies.pop(outcome.hash, None)
        return good, vectors

    def _embed_lacking(self, good: list[Outcome]) -> dict[str, dict[str, np.ndarray]]:
        """Vectors for the decoded files, from each model that has none for their content
        yet: a model added to an indexed folder does not recompute the others. The time the
        models took sets the pace of the next step."""
        vectors: dict[str, dict[str, np.ndarray]] = {}
        spent = None
        for i, (source, model) in enumerate(zip(self.sources, self.models, strict=True)):
            have = self.catalog.hashes_with_vectors([model], [o.hash for o in good])
            todo = [o for o in good if o.hash not in have]
            if todo and todo[0].vectors is not None:  # embedded where it was decoded
                vectors[source.name] = {o.hash: o.embedded[i] for o in todo}
            elif todo:
                pixels = np.stack([o.picture.pixels[i] for o in todo])
                embedded, seconds = self.model_thread.call(self._embed, i, pixels)
                vectors[source.name] = dict(zip((o.hash for o in todo), embedded, strict=True))
                spent = (spent or 0.0) + seconds
        if spent is not None:
            self.pace.took(len(good), spent)
        return vectors

    def _embed(self, i: int, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """In the model thread: the vectors and the seconds the model took (its loading,
        the first time it is needed, not counted)."""
        model = self._load(i)
        started = time.perf_counter()
        return model.embed(pixels), time.perf_counter() - started

    def _load(self, i: int) -> Embedder:
        embedder = self.embedders[i]
        if embedder is None:
            embedder = self.embedders[i] = self.sources[i].load()
        return embedder

    def _gpu_route(self) -> Callable[[bytes], str | None] | None:
        """Whether a file goes to the batched decoder; asked by the reading threads, only
        for files that need decoding."""
        if self.options.gpu_decode is None:
            return None
        from dreamsearch.indexer.gpu_decode import gpu_route

        def route(data: bytes) -> str | None:
            if self._batched_decoder() is None:
                return "batched decoding is off"
            return gpu_route(data, self.options.max_pixels)

        return route

    def _batched_decoder(self) -> JpegBatchDecoder | None:
        """The batched JPEG decoder, made once, when first needed: a run with nothing to
        decode never imports torch. ``"auto"`` makes one only if the models run on CUDA."""
        with self.gpu_decoder_lock:
            if not self.gpu_decoder_chosen:
                device = self.options.gpu_decode
                if device == "auto":
                    device = self._models_cuda_device()
                if device is not None:
                    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder

                    self.gpu_decoder = JpegBatchDecoder(device)
                self.gpu_decoder_chosen = True
            return self.gpu_decoder

    def _models_cuda_device(self) -> str | None:
        """The first model's device if it is CUDA (the decoder feeds that device)."""
        wanted = getattr(self.sources[0], "device", "cpu") if self.sources else "cpu"
        if str(wanted) == "cpu":
            return None
        from dreamsearch.models.base import resolve_device

        try:
            device = resolve_device(wanted)
        except DreamsearchError:  # the model's own load says so, once, with the reason
            return None
        return str(device) if device.type == "cuda" else None

    def _decode_on_device(self, batch: list[Outcome]) -> list[Outcome]:
        """Decode the batch's FOR_GPU files on the device, in the model thread (one CUDA
        stream: see gpu_decode). A file the device cannot decode goes to the CPU decoder,
        which gives the exact reason if the file is really broken."""
        waiting = [o for o in batch if o.kind is Kind.FOR_GPU]
        if waiting:
            decoder = self.gpu_decoder
            assert decoder is not None  # FOR_GPU files are routed only when there is one
            results = self.model_thread.call(decoder.decode, [o.data for o in waiting], self.recipes)
            for outcome, result in zip(waiting, results, strict=True):
                if isinstance(result, str):
                    outcome.decoded = self._decode_on_cpu(outcome)
                else:
                    width, height, pixels = result
                    outcome.decoded = Decoded(width, height, "JPEG", pixels)
                outcome.data = b""
        return batch

    def _decode_on_cpu(self, outcome: Outcome) -> Decoded:
        """A file the device could not decode, decoded on the CPU under the time limit."""
        args = (outcome.candidate.path, outcome.data, self.recipes, self.options.max_pixels, self.options.draft)
        limit = self.options.decode_timeout_s
        if self.readers is None:  # in the main thread: SIGALRM
            try:
                with time_limit(limit):
                    return decode_bytes(*args)
            except TimeLimitExceeded:
                return Decoded(error=too_slow(limit))
        future = self.readers.submit(decode_bytes, *args)
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            self.readers.give_up(future)
            return Decoded(error=too_slow(limit))

    @property
    def _ahead(self) -> int:
        """Files read and not yet taken: two batches, so the threads keep decoding while
        the model embeds one; bounded, so memory does not depend on the folder's size."""
        return 2 * (self.options.batch_size or DEFAULT_BATCH) + 2 * max(1, self.options.workers)

    def _batch_size(self) -> int:
        """Images per commit: ``batch_size`` if given, else one step."""
        return self.options.batch_size or self._step_size()

    def _step_size(self) -> int:
        """Images per model call: on a CPU, about ``pace.STEP_SECONDS`` of them; on CUDA,
        with a compiled network (it serves one batch size) or on Ray, the whole batch."""
        if self.paced is None:
            self.paced = (
                self.cluster is None
                and not any(getattr(s, "compile", False) for s in self.sources)
                and self._models_cuda_device() is None
            )
        return self.pace.step() if self.paced else self.options.batch_size or DEFAULT_BATCH

    # bookkeeping --------------------------------------------------------------------

    def _count_found(self, outcome: Outcome) -> None:
        """Count a file as new, changed or unchanged once its fate is recorded."""
        previous = outcome.candidate.previous
        if outcome.kind is Kind.SAME:
            self.report.unchanged += 1
        elif previous is None:
            self.report.new += 1
        elif previous.content_hash != outcome.content_hash:
            self.report.changed += 1

    def _fail(self, root_id: int, found: ScannedFile, path: str, reason: str | None) -> None:
        """Report and record a file that failed. A file whose failure cannot be recorded
        either (its values break the catalog) is only reported: not stored, it is read
        again by the next run."""
        reason = reason or "unknown error"
        self.report.failed += 1
        self.report.failures.append((path, reason))
        entry = FileEntry(
            path_to_db(found.relpath),
            found.size,
            found.mtime_ns,
            None,
            error=reason,
            inode=found.inode,
            device=found.device,
            ctime_ns=found.ctime_ns,
            failure_kind=failure_kind(reason),
        )
        try:
            self.replaced |= self.catalog.commit_batch(root_id, [entry], drop_orphans=False)
        except DreamsearchError:
            raise
        except Exception:  # noqa: BLE001 - reported above; nothing more can be kept
            pass

    def _save_indexes(self) -> None:
        started = time.monotonic()
        save_indexes(self.catalog, self.library.index_dir, self.models)
        self.saves.saved(time.monotonic() - started)


def _entry(found: ScannedFile, content_hash: str, decoded: Decoded | None = None) -> FileEntry:
    """The catalog row of a file that was read (with the picture's facts if decoded)."""
    return FileEntry(
        path_to_db(found.relpath),
        found.size,
        found.mtime_ns,
        content_hash,
        None if decoded is None else decoded.width,
        None if decoded is None else decoded.height,
        None if decoded is None else decoded.format,
        inode=found.inode,
        device=found.device,
        ctime_ns=found.ctime_ns,
    )


class _ScanWatch:
    """Whether a folder's scan stopped answering: no ``step`` (a folder listed, a file's
    status or first bytes asked for) for ``limit_s`` while it scans. A read stuck in a hung
    drive, a FUSE or network share, or a kernel file cannot be interrupted, but the run
    need not wait for it, holding the writer lock (issue 21). The time the scan spends
    waiting for the consumer (``pause``) does not count."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.since: float | None = None  # None: not scanning
        self.at = ""

    def step(self, path: str) -> None:
        self.since, self.at = time.monotonic(), path

    def pause(self) -> None:
        self.since = None

    def stalled(self) -> str | None:
        since = self.since
        if since is not None and time.monotonic() - since > self.limit_s:
            return f"the scan stopped answering for {self.limit_s:g} s at {self.at} (a hung drive or share?)"
        return None


@contextmanager
def _stop_on_interrupt(on_first: Callable[[], None], stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """First Ctrl-C sets the event (``stop``, or a new one: finish the model call, commit, save)
    and says so through ``on_first``; a second one aborts."""
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
