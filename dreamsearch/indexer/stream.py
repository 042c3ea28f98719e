"""Run a function over many items in threads, in order, a bounded number ahead.

Two properties the indexer relies on:
- back-pressure: at most ``ahead`` items are submitted and not yet taken by the consumer,
  so memory does not depend on how many items there are, while the threads keep working
  when the consumer is busy (embedding a batch);
- nothing can stall the run: an item not done ``timeout_s`` after the consumer asked for
  it is given up (``on_timeout``) and its thread replaced, and a feeder that ``stalled()``
  says stopped answering (a scan stuck in a hung drive) raises :class:`Stalled` in the
  consumer. Threads are daemons, so a thread stuck in a read or a decoder does not keep
  the process alive either.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_POLL_S = 0.1


class Stalled(Exception):
    """The items stopped coming: ``stalled()`` gave this reason. The feeder is abandoned."""


class Workers:
    """A fixed number of daemon threads taking jobs from one queue."""

    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._name = name
        self._lock = threading.Lock()
        self._given_up: set[Future[Any]] = set()  # their threads retire when (if) they come back
        self._threads: list[threading.Thread] = []
        for _ in range(count):
            self._start_thread()

    def submit(self, function: Callable[..., Result], *args: Any) -> Future[Result]:
        """Queue ``function(*args)``; its result or exception arrives in the future."""
        future: Future[Result] = Future()
        self._jobs.put((future, function, args))
        return future

    def call(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(*args)`` in a worker thread, while the caller keeps answering signals
        (Ctrl-C is heard at once even during a long model call)."""
        return wait(self.submit(function, *args))

    def give_up(self, future: Future[Any]) -> None:
        """Stop waiting for ``future``: a new thread takes the place of the one running it,
        which retires if it ever comes back."""
        with self._lock:
            if future.done():  # it came back just now; its thread carries on
                return
            self._given_up.add(future)
        self._start_thread()

    def close(self, wait_s: float = 2.0) -> None:
        """Cancel jobs not started yet and end the threads, waiting up to ``wait_s`` for
        them: a daemon thread still running when the interpreter shuts down can abort it.
        Stuck threads are abandoned."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:  # else an earlier close's note to a thread to retire
                job[0].cancel()
        with self._lock:
            threads = list(self._threads)
            for _ in threads:
                self._jobs.put(None)
        _join(threads, wait_s)

    def _start_thread(self) -> None:
        with self._lock:
            thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads) + 1}", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as exc:  # handed to the consumer, who re-raises it
                    future.set_exception(exc)
            with self._lock:
                if future in self._given_up:
                    self._given_up.discard(future)
                    return


def ordered(
    workers: Workers | None,
    function: Callable[[Item], Result],
    items: Iterable[Item],
    ahead: int,
    timeout_s: float,
    on_timeout: Callable[[Item], Result],
    stalled: Callable[[], str | None] | None = None,
) -> Generator[Result, None, None]:
    """``function(item)`` for each item, in order. ``workers=None`` runs them in the
    calling thread, one at a time (``function`` must then time itself). ``stalled``: see
    :func:`prefetched`."""
    if workers is None:
        yield from map(function, items)
        return
    submitted = prefetched(
        items,
        ahead,
        make=lambda item: (item, workers.submit(function, item)),
        drop=lambda entry: entry[1].cancel(),
        stalled=stalled,
    )
    try:
        for item, future in submitted:
            try:
                yield wait(future, timeout_s)
            except FutureTimeout:
                workers.give_up(future)
                yield on_timeout(item)
    finally:
        submitted.close()


def prefetched(
    items: Iterable[Item],
    ahead: int,
    make: Callable[[Item], Any] | None = None,
    drop: Callable[[Any], None] | None = None,
    stalled: Callable[[], str | None] | None = None,
) -> Generator[Any, None, None]:
    """``make(item)`` (or the item itself) for each of ``items``, made by a thread that is
    at most ``ahead`` entries ahead of the consumer: ``ordered`` submits work this way, and
    the Ray engine scans its next chunk while the cluster works on this one. Closing the
    iterator stops the thread within a poll and hands ``drop`` what was made and not taken.
    While the consumer waits for the next entry, ``stalled()`` is asked every poll; a reason
    raises :class:`Stalled` (the items' own clock: the thread may be stuck in a system
    call, which nothing in Python can interrupt, but the consumer need not wait for it)."""
    made: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
    slots = threading.Semaphore(max(1, ahead))  # entries made and not yet taken
    closed = threading.Event()
    done = object()

    def feed() -> None:
        try:
            for item in items:
                while not slots.acquire(timeout=_POLL_S):
                    if closed.is_set():
                        return
                if closed.is_set():
                    return
                made.put((make(item) if make else item, None))
        except BaseException as exc:  # the consumer re-raises it
            made.put((done, exc))
            return
        made.put((done, None))

    feeder = threading.Thread(target=feed, name="dreamsearch-feed", daemon=True)
    feeder.start()
    try:
        while True:
            entry, error = _take(made, stalled)
            slots.release()
            if error is not None:
                raise error
            if entry is done:
                return
            yield entry
    finally:
        closed.set()
        while True:  # what the feeder had made
            try:
                entry, _error = made.get_nowait()
            except queue.Empty:
                break
            if drop is not None and entry is not done:
                drop(entry)
        _join([feeder], 2.0)  # it polls ``closed``: gone within a poll, unless a scan is stuck


def wait(future: Future[Result], timeout_s: float | None = None) -> Result:
    """``future.result(timeout_s)``, waiting in short slices. A signal sent to the process
    may land on any thread; Python runs its handler in the main thread only when that
    thread executes bytecode, so a main thread blocked in one long wait would not hear
    Ctrl-C until the wait ends."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        slice_s = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
        try:
            return future.result(timeout=slice_s)
        except FutureTimeout:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _take(source: queue.SimpleQueue[Any], stalled: Callable[[], str | None] | None = None) -> Any:
    """``source.get()``, in short slices for the same reason as :func:`wait`."""
    while True:
        try:
            return source.get(timeout=_POLL_S)
        except queue.Empty:
            if stalled is not None and (reason := stalled()) is not None:
                raise Stalled(reason) from None


def _join(threads: list[threading.Thread], wait_s: float) -> None:
    """Join ``threads`` within ``wait_s`` in all (a stuck one is left behind)."""
    deadline = time.monotonic() + wait_s
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
