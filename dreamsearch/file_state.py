"""What says that a file on disk is still the file that was indexed, and which names on
disk are one file.

A file is unchanged only if its size, mtime, inode, device and ctime all match what was
stored. Size and mtime alone are not enough: an editor or ``exiftool -P`` rewrites a photo
and puts its mtime back, and a same-size picture moved over it gets the old mtime with
``touch -r``. Nothing can set a ctime back, and a file moved over another has a new
inode. Two names with the same (device, inode) are one file (hard links, a bind mount, a
followed symlink): never copies of each other.

Values from the file system are made to fit SQLite's signed 64-bit integers, the same way
at every read, so comparisons stay exact: inode and device numbers (unsigned on Linux)
wrap, times clamp. A modification time that does not fit (after 2262 or before 1677)
cannot be stored faithfully, so such a file fails with ``mtime_problem``'s reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, TypeVar

_INT64 = 1 << 63


class FileState(Protocol):
    """Anything that carries a file's stored or observed state (``None``: not known);
    read-only, so frozen dataclasses are ones too."""

    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def inode(self) -> int | None: ...
    @property
    def device(self) -> int | None: ...
    @property
    def ctime_ns(self) -> int | None: ...


def wrapped(number: int) -> int:
    """An unsigned 64-bit number (inode, device) as the signed one SQLite stores."""
    return number - (1 << 64) if number >= _INT64 else number


def clamped(nanoseconds: int) -> int:
    return max(-_INT64, min(_INT64 - 1, nanoseconds))


def observed(info: os.stat_result) -> tuple[int, int, int, int, int]:
    """``(size, mtime_ns, inode, device, ctime_ns)`` of a ``stat``, storable (the order of
    the fields of ``ScannedFile`` and the catalog's rows)."""
    state = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev, info.st_ctime_ns)
    if -_INT64 <= min(state) and max(state) < _INT64:  # nearly always: a no-op run checks every file
        return state
    return (
        min(info.st_size, _INT64 - 1),
        clamped(info.st_mtime_ns),
        wrapped(info.st_ino),
        wrapped(info.st_dev),
        clamped(info.st_ctime_ns),
    )


def mtime_problem(state: tuple[int, ...], info: os.stat_result) -> str | None:
    """Why a file cannot be indexed faithfully, if its mtime does not fit the catalog
    (``state`` is ``observed(info)``)."""
    if state[1] != info.st_mtime_ns:
        return "its modification time is outside the years 1677-2262 that the catalog can store (set it with touch)"
    return None


def unchanged(stored: FileState, seen: FileState) -> bool:
    """All five match. A value not known on either side (a row from before inodes were
    stored) is a difference: the file is read and hashed once more."""
    return None not in (stored.inode, stored.device, stored.ctime_ns) and (
        stored.size,
        stored.mtime_ns,
        stored.inode,
        stored.device,
        stored.ctime_ns,
    ) == (seen.size, seen.mtime_ns, seen.inode, seen.device, seen.ctime_ns)


def on_disk_as_stored(path: str, stored: FileState) -> bool:
    """Whether ``path`` is, right now, the file as stored (links followed). Values not
    stored (rows from before inodes were kept) are not compared, so an upgraded library
    answers queries before its next ``index``."""
    try:
        now = observed(os.stat(path))
    except (OSError, ValueError):
        return False
    expected = (stored.size, stored.mtime_ns, stored.inode, stored.device, stored.ctime_ns)
    return all(value is None or value == seen for value, seen in zip(expected, now, strict=True))


def through_a_link(path: str) -> bool:
    """Whether ``path`` reaches its file through a symbolic link (itself or a folder)."""
    return os.path.realpath(path) != os.path.normpath(os.path.abspath(path))


class Named(Protocol):
    """A name of a file on disk: its path and what identifies the file behind it."""

    @property
    def path(self) -> str: ...

    @property
    def file_key(self) -> tuple: ...


N = TypeVar("N", bound=Named)


def one_name_per_file(names: Sequence[N]) -> list[tuple[N, tuple[str, ...]]]:
    """Each file once, in the order of ``names``, as ``(its name, its other names)``: the
    name that reaches it without a symbolic link, else the first. So a hard link, a second
    path through a bind mount or a followed symlink is never a copy of its file, and a
    link is never preferred over its target."""
    by_file: dict[tuple, list[N]] = {}
    for name in names:
        by_file.setdefault(name.file_key, []).append(name)
    chosen = []
    for same in by_file.values():
        best = same[0] if len(same) == 1 else min(same, key=lambda n: through_a_link(n.path))
        chosen.append((best, tuple(n.path for n in same if n is not best)))
    return chosen
