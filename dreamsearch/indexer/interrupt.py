"""Ctrl-C during a run: the first asks the run to stop (the model call in flight
finishes, what is embedded is committed, the indexes are saved), the second aborts at
once. Only the main thread can hear signals; elsewhere ``stop`` alone ends a run."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def stop_on_interrupt(on_first: Callable[[], None], stop: threading.Event | None = None) -> Iterator[threading.Event]:
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
