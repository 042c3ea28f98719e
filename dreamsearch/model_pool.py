"""The models a ``Library`` keeps loaded: each built once and shared by threads, let go
only when no call is using it, at most ``limit`` kept (least recently used go first).

Why it is not one lock around a dict: building a model can take minutes (a weights
download, fingerprinting a large checkpoint, ``torch.compile``), and under one library
lock every other request waited meanwhile, ``/api/health`` included (issue 21). Each name
has its own build lock here; the shared table is locked only to look up and count.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models import PendingModel
    from dreamsearch.models.embedder import Embedder


class KeyedLocks:
    """One lock per key, made on first use: building one thing never waits for another."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}

    def __call__(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


class ModelPool:
    """Models by name. ``use`` loads one and marks it in use for the block; a model in use
    is never let go (by ``unload``, by the ``limit``, or by another caller's
    ``keep=False``), so no caller ever loads a second copy of a model another is using."""

    def __init__(self, make: Callable[[str], PendingModel], limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        self._make, self.limit = make, limit
        self._lock = threading.Lock()  # guards the four fields below; never held while building
        self._pending: dict[str, PendingModel] = {}
        self._users: Counter[str] = Counter()
        self._kept: set[str] = set()  # wanted after use (``keep=False`` callers alone: let go)
        self._last_used: dict[str, float] = {}  # in order of last use, oldest first
        self._building = KeyedLocks()

    def pending(self, name: str) -> PendingModel:
        """``name`` with its weights found and checked (see ``PendingModel``), once per name;
        the model stays in the pool once loaded (until ``unload`` or the limit)."""
        with self._lock:
            self._kept.add(name)
        return self._pending_model(name)

    @contextmanager
    def held(self, name: str, keep: bool = True) -> Iterator[PendingModel]:
        """``name`` as a ``PendingModel``, in use until the block ends (loaded or not)."""
        with self._lock:
            self._users[name] += 1
            if keep:
                self._kept.add(name)
        try:
            yield self._pending_model(name)
        finally:
            with self._lock:
                self._users[name] -= 1
                self._last_used.pop(name, None)
                self._last_used[name] = time.monotonic()
            self._let_go()

    @contextmanager
    def use(self, name: str, keep: bool = True) -> Iterator[Embedder]:
        """The model ``name``, loaded, and in use until the block ends. With ``keep=False``
        it is let go afterwards unless another caller wants it kept or is using it."""
        with self.held(name, keep) as pending:
            if not pending.loaded:
                self._let_go(room_for=name)  # under the limit before this one loads, not after
            yield pending.load()

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(name for name, pending in self._pending.items() if pending.loaded)

    def unload(self, idle_for: float = 0.0) -> list[str]:
        """Let go of every model unused for ``idle_for`` seconds and not in use now."""
        now = time.monotonic()
        return self._drop(lambda name: now - self._last_used.get(name, 0.0) >= idle_for)

    def _pending_model(self, name: str) -> PendingModel:
        with self._lock:
            pending = self._pending.get(name)
        if pending is not None:
            return pending
        with self._building(name):
            with self._lock:
                pending = self._pending.get(name)
            if pending is None:
                pending = self._make(name)  # slow: outside the table lock
                with self._lock:
                    self._pending[name] = pending
            return pending

    def _let_go(self, room_for: str | None = None) -> None:
        """Drop the models nobody wants kept, then the least recently used idle ones over
        the limit (leaving a place for ``room_for``, about to load)."""
        self._drop(lambda name: name not in self._kept)
        if self.limit is None:
            return
        with self._lock:
            loaded = sum(pending.loaded for pending in self._pending.values())
            excess = loaded - (self.limit - (room_for is not None))
            idle = [
                n
                for n in self._last_used  # oldest first
                if n in self._pending and self._pending[n].loaded and self._users[n] == 0
            ]
            evicted = set(idle[: max(excess, 0)])
        if evicted:
            self._drop(evicted.__contains__)

    def _drop(self, wanted: Callable[[str], bool]) -> list[str]:
        """Drop the models not in use for which ``wanted(name)`` holds (called under the lock)."""
        with self._lock:
            names = [n for n in self._pending if self._users[n] == 0 and wanted(n)]
            for name in names:
                del self._pending[name]
                self._kept.discard(name)
                self._last_used.pop(name, None)
        if names:
            _free_device_memory()
        return names


def _free_device_memory() -> None:
    """Hand the CUDA memory of dropped models back to the driver (PyTorch's caching
    allocator keeps freed blocks otherwise, so ``nvidia-smi`` would show them still used)."""
    torch = sys.modules.get("torch")  # never imported here: only a process that ran a model has it
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()  # a model in a reference cycle still holds its tensors
        torch.cuda.empty_cache()
