"""Test inputs made once per test run and read by every pytest-xdist worker.

A session-scoped fixture runs once per worker: under ``-n 2`` both workers wrote the same
full-size official caches (5-10 s each on 2 cores) and asked the official package for the
same reference vectors. What is made here lives beside the workers' own temporary folders
(their common parent), made by whichever worker asks first while the others wait on a lock.
Only for inputs no test changes: a test that changes one copies it first."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest


def run_folder(factory: pytest.TempPathFactory) -> Path:
    """The folder every worker of this run sees: the parent of each xdist worker's own
    base folder (``.../pytest-N/popen-gwK``), or the base folder without xdist."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(folder: Path, name: str, make: Callable[[Path], object]) -> Path:
    """``folder/name``, which ``make(path)`` writes (a file or a folder) the first time
    anyone asks for it; whoever asks meanwhile waits until it is complete."""
    path, done = folder / name, folder / f"{name}.done"
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            make(path)
            done.touch()
    return path
