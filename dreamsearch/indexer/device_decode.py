"""Which new files the batched JPEG decoder (``gpu_decode``) takes, and decoding them: on
the models' CUDA device it decodes baseline JPEGs in batches (measured 2.6x faster end
to end on an H100, docs/indexing.md), in the model thread (one CUDA stream); the CPU
threads decode the rest, and any file the device could not decode. The decoder is made
when the first file needs it, so a run with nothing to decode never imports torch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from dreamsearch.errors import DreamsearchError
from dreamsearch.images import Decoded, TimeLimitExceeded, decode_bytes, time_limit, too_slow
from dreamsearch.indexer.options import IndexOptions, ModelSource
from dreamsearch.indexer.outcomes import DecodedContent, Failed, ForDevice, NewContent, Ready
from dreamsearch.indexer.stream import Workers
from dreamsearch.models import may_run_on_cuda

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder, Result


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

    def route(self) -> Callable[[bytes], str | None] | None:
        """Whether a file goes to the batched decoder (``None``: it does; else why not);
        asked by the reading threads, only for files that need decoding."""
        if self._options.gpu_decode is None:
            return None
        from dreamsearch.indexer.gpu_decode import gpu_route

        def route(data: bytes) -> str | None:
            if self.decoder() is None:
                return "batched decoding is off"
            return gpu_route(data, self._options.max_pixels)

        return route

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
