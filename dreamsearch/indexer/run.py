"""Bring a library up to date with folders on disk: one run of ``dreamsearch index``.

The order is chosen so nothing is lost or redone (docs/indexing.md has the diagram):
1. each folder is scanned in the thread that feeds the readers and set against the catalog
   (``diff``): files whose size, mtime, inode, device and ctime all match the catalog are
   skipped unread (``file_state``), as are failed files, unless their failure can pass
   (``failures``). A folder inside an indexed root joins that root (one file on disk is
   one file here);
2. new or changed files stream, as the scan finds them, through reading threads
   (``local_engine``, ``pipeline``): each is read once, hashed, and either recognised as a
   copy or move of indexed content (no decode) or decoded from the same bytes (baseline
   JPEGs on the models' GPU: ``device_decode``), a bounded number of files ahead of the
   model (with ``engine="ray"``, Ray tasks and actors do this and the embedding, and send
   back outcomes with vectors: ``ray_engine``);
3. this thread embeds decoded files in batches with every model (``embedding``) and
   commits each batch (files, contents, vectors) in one transaction (``batches``,
   ``writer``), so a killed run loses at most the batch in flight, and the first batch is
   committed seconds after the start;
4. only then are files gone from disk removed (a move keeps its vectors: its new path was
   committed before the old one goes), unless the folder looks unmounted: a folder that
   lost every file, or more than half of them, keeps them until ``prune``;
5. the FAISS indexes catch up from the catalog and are saved (also during the run: see
   ``writer.SaveSchedule``).
On a CPU the model takes a few seconds of images at a time (``pace``), so the first commit
comes as soon as one image is embedded and Ctrl-C ends the run within seconds: the model
call in flight finishes, what is embedded is committed, the rest is left for the next run
(the model runs in its own thread, so the signal is heard at once); a second Ctrl-C stops
at once. No model is loaded unless a file needs embedding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from dreamsearch.catalog import Catalog
from dreamsearch.errors import DreamsearchError
from dreamsearch.indexer.batches import Committer, Pending
from dreamsearch.indexer.device_decode import DeviceDecoding
from dreamsearch.indexer.diff import CatalogDiff, FolderPlan
from dreamsearch.indexer.embedding import RunModels
from dreamsearch.indexer.interrupt import stop_on_interrupt
from dreamsearch.indexer.local_engine import LocalEngine
from dreamsearch.indexer.options import IndexOptions, IndexReport, ModelSource, OnPicture, Progress
from dreamsearch.indexer.outcomes import Failed, Outcome
from dreamsearch.indexer.pipeline import ClaimRegistry
from dreamsearch.indexer.stream import Stalled, Workers
from dreamsearch.indexer.writer import CatalogWriter
from dreamsearch.layout import LibraryLayout

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.indexer.ray_engine import RayEngine

#: A folder whose files time out this many times in a row stopped answering (a hung drive
#: or share): the run stops reading it rather than wait a minute per file.
MAX_TIMEOUTS_IN_A_ROW = 3

#: Where one folder's outcomes come from, and the claims they were classified by.
Stream = Callable[[FolderPlan], tuple[ClaimRegistry, Generator[Outcome, None, None]]]


def index_folders(
    layout: LibraryLayout,
    roots: Sequence[Path],
    models: Sequence[ModelSource],
    options: IndexOptions = IndexOptions(),  # noqa: B008 - frozen: one shared default is safe
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    on_picture: OnPicture | None = None,
) -> IndexReport:
    """Index ``roots`` into the library at ``layout`` with every one of ``models`` (loaded
    embedders, or ``dreamsearch.models.PendingModel``s, loaded only if something needs it).
    Setting ``stop`` ends the run as a first Ctrl-C does (what the model embedded is
    committed, the report says ``interrupted``). ``on_picture(file, picture)`` is called in a reading
    thread with each picture decoded on the CPU (not with the Ray engine)."""
    for root in roots:
        if not Path(root).is_dir():
            raise DreamsearchError(f"{root}: not a folder")
    progress = progress or (lambda report: None)
    report = IndexReport()

    def on_first_interrupt() -> None:
        report.stopping = True
        progress(report)

    with (
        layout.writer_lock(),
        Catalog(layout.catalog_path) as catalog,
        stop_on_interrupt(on_first_interrupt, stop) as stop,
    ):
        run = _Run(catalog, layout, list(models), options, progress, stop, report, on_picture)
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


class _Run:
    """One run: the consumer end of the pipeline (this thread), the model thread, and the
    parts that keep the catalog and the report right."""

    def __init__(
        self,
        catalog: Catalog,
        layout: LibraryLayout,
        sources: list[ModelSource],
        options: IndexOptions,
        progress: Progress,
        stop: threading.Event,
        report: IndexReport,
        on_picture: OnPicture | None = None,
    ) -> None:
        self.catalog, self.layout, self.sources = catalog, layout, sources
        self.options, self.progress, self.stop, self.report = options, progress, stop, report
        self.on_picture = on_picture  # not with the Ray engine
        self.model_thread = Workers(1, "dreamsearch-model")  # closed at the end of execute
        self.models = RunModels(catalog, sources, options, self.model_thread)
        self.readers: Workers | None = None
        self.cluster: RayEngine | None = None

    def execute(self, roots: list[Path]) -> IndexReport:
        started = time.perf_counter()
        try:
            if self.options.dry_run:
                CatalogDiff(self.catalog, self.options, self.report, self.stop).count(roots)
            else:
                self._index(roots)
        finally:
            self.models.finish_loading()
            self.model_thread.close()
            if self.readers is not None:
                self.readers.close()
            if self.cluster is not None:
                self.cluster.close()
        self.report.missing_roots = [p for p in self.catalog.roots().values() if not Path(p).is_dir()]
        self.report.interrupted = self.stop.is_set()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _index(self, roots: list[Path]) -> None:
        diff = CatalogDiff(self.catalog, self.options, self.report, self.stop, self.models.register())
        writer = CatalogWriter(self.catalog, self.layout, self.report)
        decoding, stream = self._start_engine(diff)
        committer = Committer(writer, self.models, decoding, self.stop)
        sweep_everything = self.catalog.defer_orphans()
        plans = []
        self.report.scanning = len(roots)
        for i, root in enumerate(roots):
            if self.stop.is_set():
                break
            plans.append(diff.plan(self.catalog.attach(root), root))
            self._add(plans[-1], stream, committer, later=len(roots) - i - 1)
        self.catalog.drop_orphans(None if sweep_everything else writer.replaced)
        if not self.stop.is_set():
            found_again = frozenset(committer.reused)
            for plan in plans:
                if plan.complete:
                    diff.remove_gone(plan, found_again)
        gone_hashes = {plan.stored[g].content_hash for plan in plans for g in plan.gone or ()}
        moved = sum(1 for content_hash in committer.reused if content_hash in gone_hashes)
        self.report.moved += moved
        self.report.copied -= moved
        writer.save_indexes(self.models.infos)

    def _start_engine(self, diff: CatalogDiff) -> tuple[DeviceDecoding, Stream]:
        """The run's batched decoding, and where each folder's outcomes come from: the Ray
        cluster, or this process's reading threads."""
        options = self.options
        if options.engine == "ray":
            from dreamsearch.indexer.ray_engine import RayEngine

            cluster = self.cluster = RayEngine.for_run(
                options.ray_address, self.layout.catalog_path, self.models.infos, self.sources, options
            )
            decoding = DeviceDecoding(options, self.sources, self.model_thread, None)  # Ray tasks decode
            return decoding, lambda plan: (cluster.contents, cluster.outcomes(diff.candidates(plan)))
        # Off the main thread there is no SIGALRM, so "in this thread" gets one timed thread.
        workers = options.workers or (0 if threading.current_thread() is threading.main_thread() else 1)
        self.readers = Workers(workers, "dreamsearch-read") if workers else None
        decoding = DeviceDecoding(options, self.sources, self.model_thread, self.readers)
        if options.gpu_decode not in (None, "auto"):
            decoding.decoder()  # asked for by name: fail now if that device is missing
        local = LocalEngine(self.catalog, self.models, options, self.readers, decoding.route(), self.on_picture)
        return decoding, lambda plan: local.stream(partial(diff.candidates, plan))

    def _add(self, plan: FolderPlan, stream: Stream, committer: Committer, later: int) -> None:
        """Stream the folder's files through the reading threads (or the Ray cluster) as
        the scan finds them; embed and commit as results arrive. ``later``: folders after
        this one (their scans have not started)."""
        contents, outcomes = stream(plan)
        pending = Pending(plan.place, contents)
        in_a_row = 0
        try:
            for outcome in outcomes:
                self.report.read += 1
                committer.take(pending, outcome)
                if pending.batch and len(pending.batch) >= self.models.batch_size():
                    self._progress(plan, later)  # shown while the model works
                    committer.commit(pending)
                elif pending.files_due():
                    committer.commit(pending, embed=False)
                self._progress(plan, later)
                in_a_row = in_a_row + 1 if isinstance(outcome, Failed) and outcome.gave_up else 0
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
        committer.finish(pending)
        committer.writer.record_scan_errors(plan.place, plan.scan_errors)
        self.report.unchanged += plan.unchanged
        self._progress(plan, later)

    def _progress(self, plan: FolderPlan, later: int) -> None:
        """Tell the caller, with the folders still being scanned: this one until its scan
        ended (or the run gave up on it), and those after it."""
        self.report.scanning = later + (plan.gone is None and plan.stopped_reading is None)
        self.progress(self.report)
