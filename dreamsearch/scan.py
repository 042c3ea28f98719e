"""Find the image files under a folder, cheaply: one ``os.scandir`` walk, and a 32-byte
sniff of files whose extension does not already say "image".

A file is a candidate if its first bytes are those of an image format we decode, or its
name ends in an image extension (so a broken ``.jpg`` is reported, not silently skipped).
Hidden files and folders and well-known junk folders are skipped.
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
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff",
    ".heic", ".heif", ".hif", ".avif",
}
JUNK_FOLDERS = {
    "@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information", "node_modules",
    "__pycache__", "lost+found",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


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
) -> Iterator[ScannedFile]:
    """Yield candidate image files under ``root`` with their state. Unreadable folders
    and broken links are reported through ``on_error(path, reason)`` and skipped."""
    root = Path(root)
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen_dirs:
                continue  # a symlink loop, or the same folder linked twice
            seen_dirs.add((info.st_dev, info.st_ino))
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


def _looks_like_image(path: str, name: str) -> bool:
    if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            return sniff_image(handle.read(32))
    except OSError:
        return False
