"""Writing files so that a crash, a full disk or a concurrent reader never sees half of
one: write beside the target, flush to disk, then rename over it (atomic on POSIX)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` to write to. If the block ends without
    an error, the file is flushed to disk and renamed over ``path``; in any case no
    temporary file is left behind. The name is unique, so concurrent writers of the same
    target each rename a whole file."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        yield staged
        fsync_file(staged)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)  # gone already once renamed into place


def write_atomically(path: str | os.PathLike, data: bytes | str) -> None:
    with staged_file(path) as staged:
        staged.write_bytes(data.encode() if isinstance(data, str) else data)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
