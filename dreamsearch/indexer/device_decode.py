"""Which new files the batched JPEG decoder (``gpu_decode``) takes, and decoding them: on
the models' CUDA device it decodes baseline JPEGs in batches (measured 2.6x faster end
to end on an H100, docs/indexing.md), in the model thread (one CUDA stream); the CPU
threads decode the rest, any file the device could not decode, and the files that would
only wait for the device: while a device call's worth of files already waits for it, a
reading thread decodes the next one itself (the batched decoder, one thread, did 288
img/s on an H200 and the 15 reading threads 148 img/s, but they only read and hashed
while the device decoded everything). The decoder is made when the first file needs it, so a
run with nothing to decode never imports torch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from dreamsearch.errors import DreamsearchError
from dreamsearch.images import Decoded, TimeLimitExceeded, decode_bytes, time_limit, too_slow
from dreamsearch.indexer.options import IndexOptions, ModelSource
from dreamsearch.indexer.outcomes import DecodedContent, Failed, ForDevice, NewContent, Ready
from dreamsearch.indexer.pace import DEFAULT_BATCH
from dreamsearch.indexer.stream import Workers
from dreamsearch.models import may_run_on_cuda

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder, Result

#: Device calls' worth of files that may wait for the device; a file beyond them is decoded
#: by its reading thread. One: while the device works through one call the next is queued,
#: and the reading threads' spare time goes to decoding. On an H200 (ensemble, batch 128,
#: 15 reading threads, 12 MP JPEGs, steady img/s): every file to the device 209, one call
#: 264 (two thirds of the files on the device), two calls 229, half a call 238
#: (benchmarks/results/index_throughput_h200.txt).
CALLS_WAITING = 1


def models_cuda_device(sources: Sequence[ModelSource]) -> str | None:
    """The first model's device if it is CUDA (the decoder feeds that device)."""
    wanted = sources[0].device if sources else "cpu"
    if not may_run_on_cuda(str(wanted)):
        return None
    from dreamsearch.models.base import resolve_device

    try:
        device = resolve_device(wanted)
    except DreamsearchError:  # the model's own load says so, once, with the reason
        return None
    return str(device) if device.type == "cuda" else None


class DeviceDecoding:
    """The run's batched decoding. ``readers``: the threads that decode on the CPU (``None``:
    the calling thread) where a file the device could not take is decoded again."""

    def __init__(
        self, options: IndexOptions, sources: Sequence[ModelSource], model_thread: Workers, readers: Workers | None
    ) -> None:
        self._options, self._sources = options, sources
        self._model_thread, self._readers = model_thread, readers
        self._recipes = tuple(s.preprocess_spec for s in sources)
        self._decoder: JpegBatchDecoder | None = None
        self._chosen = False
        self._lock = threading.Lock()
        #: Files routed to the device and not yet in a device call, and how many may be.
        self._waiting = 0
        self._most_waiting = max(1, round(CALLS_WAITING * (options.batch_size or DEFAULT_BATCH)))

    def route(self) -> Callable[[bytes], str | None] | None:
        """Whether a file goes to the batched decoder (``None``: it does; else why not);
        asked by the reading threads, only for files that need decoding."""
        if self._options.gpu_decode is None:
            return None
        from dreamsearch.indexer.gpu_decode import gpu_route

        def route(data: bytes) -> str | None:
            if self.decoder() is None:
                return "batched decoding is off"
            reason = gpu_route(data, self._options.max_pixels)
            if reason is None and not self._wait_for_device():
                return "the device has a call's worth of files waiting"
            return reason

        return route

    def _wait_for_device(self) -> bool:
        """Count a file in among those waiting for the device, unless enough already do.
        The share follows the speeds by itself: the slower the device, the more files
        find it busy and are decoded by the reading threads."""
        with self._lock:
            if self._waiting >= self._most_waiting:
                return False
            self._waiting += 1
            return True

    def stream_ended(self) -> None:
        """A folder's stream is over and its batch committed: no file waits for the
        device (those read ahead and dropped at a stop were never handed to it)."""
        with self._lock:
            self._waiting = 0

    def decoder(self) -> JpegBatchDecoder | None:
        """The batched JPEG decoder, made once, when first needed. ``"auto"`` makes one
        only if the models run on CUDA."""
        with self._lock:
            if not self._chosen:
                device = self._options.gpu_decode
                if device == "auto":
                    device = models_cuda_device(self._sources)
                if device is not None:
                    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder

                    self._decoder = JpegBatchDecoder(device)
                self._chosen = True
            return self._decoder

    def decode(self, batch: Sequence[NewContent]) -> list[Ready | Failed]:
        """The batch, in order, with its ``ForDevice`` files decoded on the device in the
        model thread. A file the device cannot decode goes to the CPU decoder, which gives
        the exact reason if the file is really broken."""
        waiting = [o for o in batch if isinstance(o, ForDevice)]
        with self._lock:
            self._waiting = max(0, self._waiting - len(waiting))
        results: Iterator[Result] = iter(())
        if waiting:
            decoder = self._decoder
            assert decoder is not None  # ForDevice files are routed only when there is one
            results = iter(self._model_thread.call(decoder.decode, [o.data for o in waiting], self._recipes))
        return [self._decoded(o, next(results)) if isinstance(o, ForDevice) else o for o in batch]

    def _decoded(self, outcome: ForDevice, result: Result) -> DecodedContent | Failed:
        if isinstance(result, str):
            decoded = self._decode_on_cpu(outcome)
        else:
            width, height, pixels = result
            decoded = Decoded(width, height, "JPEG", pixels)
        if decoded.error:
            return Failed(outcome.candidate, decoded.error, outcome.content_hash)
        return DecodedContent(outcome.candidate, outcome.content_hash, decoded)

    def _decode_on_cpu(self, outcome: ForDevice) -> Decoded:
        """A file the device could not decode, decoded on the CPU under the time limit."""
        options = self._options
        args = (outcome.candidate.path, outcome.data, self._recipes, options.max_pixels, options.draft)
        limit = options.decode_timeout_s
        if self._readers is None:  # in the main thread: SIGALRM
            try:
                with time_limit(limit):
                    return decode_bytes(*args)
            except TimeLimitExceeded:
                return Decoded(error=too_slow(limit))
        future = self._readers.submit(decode_bytes, *args)
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            self._readers.give_up(future)
            return Decoded(error=too_slow(limit))
