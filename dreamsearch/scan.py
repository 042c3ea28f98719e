"""Find the image files under a folder, cheaply: one ``os.scandir`` walk, and a 32-byte
sniff of files whose extension does not already say "image".

A file is a candidate if its first bytes are those of an image format we decode, or its
name ends in an image extension (so a broken ``.jpg`` is reported, not silently skipped).
Hidden files and folders, well-known junk folders and pseudo file systems are skipped.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dreamsearch.file_state import mtime_problem, observed

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".dib",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".hif",
    ".avif",
}
JUNK_FOLDERS = {
    "@eaDir",
    "#recycle",
    "$RECYCLE.BIN",
    "System Volume Information",
    "node_modules",
    "__pycache__",
    "lost+found",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
#: Kernel file systems: no photos, and files that block a reader for ever (``/proc/kmsg``
#: waits for the next kernel message: an index job over ``/proc`` held the writer lock
#: until one came, issue 21) or never end. Skipped by type, wherever they are mounted.
PSEUDO_FILE_SYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "configfs",
        "fusectl",
        "mqueue",
        "binfmt_misc",
        "efivarfs",
        "selinuxfs",
        "nsfs",
        "rpc_pipefs",
    }
)


@dataclass(frozen=True)
class ScannedFile:
    """A candidate file and its state on disk (``dreamsearch.file_state``); ``problem``
    says why it cannot be indexed faithfully (a modification time past 2262)."""

    relpath: str
    size: int
    mtime_ns: int
    inode: int | None = None
    device: int | None = None
    ctime_ns: int | None = None
    problem: str | None = None


def sniff_image(head: bytes) -> bool:
    """True if ``head`` (a file's first bytes) starts like JPEG, PNG, GIF, WebP, BMP,
    TIFF, HEIF/HEIC or AVIF."""
    return (
        head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*"))
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or (head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS)
    )


def scan(
    root: Path,
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    step: Callable[[str], None] = lambda path: None,
) -> Iterator[ScannedFile]:
    """Yield candidate image files under ``root`` with their state. Unreadable folders
    and broken links are reported through ``on_error(path, reason)`` and skipped, as is a
    ``root`` on a pseudo file system (those below it are skipped quietly). ``step(path)``
    is called before each call that may block (listing a folder, a file's status, its
    first bytes), so a caller can tell a scan that stopped answering."""
    root = Path(root)
    types = file_system_types()
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            step(str(folder))
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen_dirs:
                continue  # a symlink loop, or the same folder linked twice
            seen_dirs.add((info.st_dev, info.st_ino))
            if types.get(info.st_dev) in PSEUDO_FILE_SYSTEMS:
                if folder == root:
                    on_error(str(folder), f"a {types[info.st_dev]} file system, not photos: skipped")
                continue
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            on_error(str(folder), exc.strerror or str(exc))
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in JUNK_FOLDERS:
                continue
            relpath = os.path.relpath(entry.path, root)
            if any(fnmatch.fnmatch(relpath, pattern) or fnmatch.fnmatch(entry.name, pattern) for pattern in exclude):
                continue
            try:
                step(entry.path)
                if entry.is_symlink() and not follow_symlinks:
                    continue
                info = entry.stat(follow_symlinks=True)
            except OSError as exc:
                on_error(entry.path, exc.strerror or str(exc))
                continue
            if stat.S_ISDIR(info.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(info.st_mode) and _looks_like_image(entry.path, entry.name):
                state = observed(info)
                yield ScannedFile(relpath, *state, mtime_problem(state, info))


def file_system_types() -> dict[int, str]:
    """The type of each mounted file system by device number (``st_dev``), from
    ``/proc/self/mountinfo``; empty where there is none. Not ``statfs``: its type number
    is TMPFS_MAGIC for devtmpfs (``/dev``) as for any tmpfs (measured here)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return {}
    types = {}
    for line in lines:  # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
        fields = line.split()
        try:
            major, minor = fields[2].split(":")
            types[os.makedev(int(major), int(minor))] = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
    return types


def _looks_like_image(path: str, name: str) -> bool:
    if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        return True
    try:
        # O_NONBLOCK: a file that waits for data (a kernel log, a device's node) answers at once
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        return sniff_image(os.read(descriptor, 32))
    except OSError:
        return False
    finally:
        os.close(descriptor)
