"""Bounded work: each kind of heavy request runs in its own lane, a few at a time, and the
rest wait in a short queue or are told to come back (503 with ``Retry-After``).

Why lanes: FastAPI runs every ``def`` route in one pool of 40 threads. 64 uncached
thumbnails of large photos took all of them, and ``/api/health`` waited 31-38 s behind
them; 32 clients of ``/similar`` ran 32 FAISS searches at once on 2 cores (p99 3.7 s), and
16 uploads decoded at once took gigabytes (issue 21). A lane has as many threads as it
has slots, so decoding, embedding and searching never take more than their share, and the
light routes keep the shared pool to themselves.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse

from dreamsearch.defaults import usable_cores

Result = TypeVar("Result")

#: Largest upload the server decodes, in pixels (width × height). The library's own limit
#: (200 MP) is for photos on disk; an upload of 196 MP (a 24 KB 1-bit PNG) took 1.06 GB.
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000


@dataclass(frozen=True)
class Limits:
    """How much work the server takes on at once (docs/serve.md, "Limits")."""

    #: Uploads decoded and embedded at once (and thumbnails made, duplicates searched).
    heavy_slots: int = field(default_factory=usable_cores)
    #: Index searches (by id, by vector) run at once: FAISS already uses every core for one.
    search_slots: int = field(default_factory=usable_cores)
    #: Requests that may wait for a slot, per lane; more get 503 at once.
    queue: int = 64
    #: Longest wait for a slot before 503.
    wait_s: float = 10.0
    #: Longest an upload may take to decode and embed once it has a slot.
    upload_time_limit_s: float = 30.0
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    #: Load a model a request names that is not among ``--models`` (else 400).
    load_models_on_request: bool = False


class Busy(Exception):
    """No slot in time: the client should come back after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooSlow(Exception):
    """The work took longer than its time limit; it goes on in its thread and keeps its
    slot until it ends, so a stuck decode cannot let more work in than the lane holds."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"took longer than {seconds:g} s")
        self.seconds = seconds


class Lane:
    """``slots`` calls at a time on threads of their own; up to ``queue`` more wait (at
    most ``wait_s``, first come first served), the rest get :class:`Busy`. A
    ``background`` lane's threads run at a lower priority (:func:`yield_the_cpu`)."""

    def __init__(self, name: str, slots: int, queue: int, wait_s: float, background: bool = False) -> None:
        self.name, self.slots, self.queue, self.wait_s = name, max(1, slots), queue, wait_s
        self._free = asyncio.Semaphore(self.slots)
        self._waiting = 0
        self._threads = ThreadPoolExecutor(
            self.slots, thread_name_prefix=f"dreamsearch-{name}", initializer=yield_the_cpu if background else None
        )
        self._mean_s = 1.0  # moving average of a call's time: what Retry-After is made of
        self._running, self._running_lock = 0, threading.Lock()

    async def run(self, function: Callable[..., Result], *args, time_limit: float | None = None) -> Result:
        """``function(*args)`` on this lane's threads, once a slot is free."""
        await self._enter()
        loop = asyncio.get_running_loop()
        began = loop.time()

        def finished(_future) -> None:  # the slot is freed when the thread is, not the request
            self._mean_s = 0.8 * self._mean_s + 0.2 * (loop.time() - began)
            try:
                loop.call_soon_threadsafe(self._free.release)
            except RuntimeError:  # the server has stopped: nobody waits any more
                pass

        try:
            future = self._threads.submit(self._call, function, *args)
        except BaseException:
            self._free.release()
            raise
        future.add_done_callback(finished)
        result = asyncio.wrap_future(future)
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen, if nobody waits any more
        try:
            return await asyncio.wait_for(asyncio.shield(result), time_limit)
        except asyncio.TimeoutError:
            assert time_limit is not None  # without one, wait_for never times out
            raise TooSlow(time_limit) from None

    def _call(self, function: Callable[..., Result], *args) -> Result:
        with self._running_lock:
            self._running += 1
        try:
            return function(*args)
        finally:
            with self._running_lock:
                self._running -= 1
                idle = self._running == 0 and self._waiting == 0
            if idle:
                give_back_freed_memory()

    async def _enter(self) -> None:
        if self._waiting >= self.queue:
            raise Busy(
                f"the server is busy ({self.name}: {self.queue} requests waiting); try again later", self._retry_after()
            )
        self._waiting += 1
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait_s)
        except asyncio.TimeoutError:
            raise Busy(
                f"the server is busy ({self.name}: no slot within {self.wait_s:g} s); try again later",
                self._retry_after(),
            ) from None
        finally:
            self._waiting -= 1

    def _retry_after(self) -> int:
        """Seconds until the queue ahead has likely drained."""
        return max(1, min(60, math.ceil((self._waiting + self.slots) * self._mean_s / self.slots)))

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


#: How much nicer than the rest of the server a lane's threads run (Linux ``nice`` steps).
LANE_NICENESS = 10


def yield_the_cpu() -> None:
    """Run this thread, and the threads it starts (a pool of FAISS's or torch's OpenMP
    threads is made by the thread that first uses it), at a lower priority than the event
    loop and the light routes. On 2 cores the heavy lanes keep both busy, and at equal
    priority ``/api/status`` (40 ms of work) took 200 ms at p99; at nice +10 the scheduler
    gives the light work about ten times their share while it wants the CPU. Linux sets
    niceness per thread; elsewhere, or where it is not allowed, this does nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + LANE_NICENESS)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        pass


def give_back_freed_memory() -> None:
    """Return the heap's free memory to the system (glibc's ``malloc_trim``), when a lane
    falls idle. Decoded pictures are freed at once, but glibc keeps the freed blocks of
    each thread's arena: after a burst of uploads and thumbnails the server's RSS stayed
    1.3x its start here (issue 21: 2.47 GB after, 1.05 GB before); trimmed, it comes back
    near the start. Elsewhere than glibc this does nothing."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # pragma: no cover - not glibc
        return None


_LIBC = _glibc()


async def answer_busy(request: Request, exc: Busy) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})


def heavy_slots(device: str) -> int:
    """Heavy lane slots for ``device``: the cores; on CUDA at most 4 (each forward pass in
    flight holds its activations in GPU memory, and one GPU runs them one after another)."""
    if device == "cpu":
        return usable_cores()
    import torch  # the server loads its models at start-up anyway

    on_gpu = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    return min(usable_cores(), 4) if on_gpu else usable_cores()
