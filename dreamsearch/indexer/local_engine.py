"""The local engine: a folder's candidates read, hashed and decoded by this process's
reading threads (``FileProcessor``), handed back in order, a bounded number ahead of the
consumer so memory does not depend on the folder's size (``stream.ordered``). A file or
a scan that stops answering is given up rather than waited for. ``ray_engine`` is the
same stages on a Ray cluster."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from dreamsearch.catalog import Catalog
from dreamsearch.images import too_slow
from dreamsearch.indexer.diff import ScanWatch
from dreamsearch.indexer.embedding import RunModels
from dreamsearch.indexer.options import IndexOptions, OnPicture
from dreamsearch.indexer.outcomes import Candidate, Failed, Outcome
from dreamsearch.indexer.pace import DEFAULT_BATCH
from dreamsearch.indexer.pipeline import ClaimRegistry, Contents, FileProcessor
from dreamsearch.indexer.stream import Workers, ordered

#: Batches' worth of files the reading threads may be ahead of the committing thread. Four
#: gave 270 img/s against two's 264 with GPU decoding on an H200, within the spread between
#: runs (239-270), for 115 MiB more memory (benchmarks/results/index_throughput_h200.txt).
BATCHES_AHEAD = 2


class LocalEngine:
    """Streams of outcomes for one run; ``readers`` ``None``: read in the calling thread."""

    def __init__(
        self,
        catalog: Catalog,
        models: RunModels,
        options: IndexOptions,
        readers: Workers | None,
        gpu_route: Callable[[bytes], str | None] | None,
        on_picture: OnPicture | None,
    ) -> None:
        self._catalog, self._models, self._options = catalog, models, options
        self._readers, self._gpu_route, self._on_picture = readers, gpu_route, on_picture

    def stream(
        self, candidates: Callable[[ScanWatch], Iterator[Candidate]]
    ) -> tuple[ClaimRegistry, Generator[Outcome, None, None]]:
        """The folder's claims on contents, and the outcomes of ``candidates(watch)`` (the
        scan, which steps ``watch`` as it goes), in order."""
        options = self._options
        contents = Contents(self._catalog, self._models.infos)
        processor = FileProcessor(
            contents,
            self._models.recipes,
            options.max_file_size,
            options.max_pixels,
            options.draft,
            options.decode_timeout_s,
            self._gpu_route,
            self._on_picture,
        )
        watch = ScanWatch(options.decode_timeout_s)
        return contents, ordered(
            self._readers,
            processor,
            candidates(watch),
            self._ahead,
            options.decode_timeout_s,
            lambda candidate: self._gave_up(contents, candidate),
            watch.stalled,
        )

    @property
    def _ahead(self) -> int:
        """Files read and not yet taken: ``BATCHES_AHEAD`` batches, so the threads keep
        decoding while the model embeds one; bounded, so memory does not depend on the
        folder's size."""
        return BATCHES_AHEAD * (self._options.batch_size or DEFAULT_BATCH) + 2 * max(1, self._options.workers)

    def _gave_up(self, contents: ClaimRegistry, candidate: Candidate) -> Outcome:
        """The outcome of a file whose thread did not answer in time (its copies fail too)."""
        reason = too_slow(self._options.decode_timeout_s)
        return Failed(candidate, reason, contents.abandon(candidate.path, reason), gave_up=True)
