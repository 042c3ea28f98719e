"""JPEG thumbnails of indexed files, in a few fixed sizes, kept in a bounded cache in the
library folder.

Why fixed sizes and a bound: any size from 32 to 1024 used to be cached, so two photos at
every size made ~37 MB each, about 10 GB for 283 photos, and on a full disk the next index
job failed (issue 21). Now a request is served the next fixed size up (the browser scales
it), the cache holds at most ``--thumbnail-cache`` bytes, and the least recently used
thumbnails go first (they are made again on demand). The web UI's grid size is made while
an index job decodes each new photo, from the pixels already decoded, so a first view of
results needs no decoding at all.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from dreamsearch.catalog import FileDetail
from dreamsearch.file_state import FileState
from dreamsearch.images import decode

#: The sizes made and cached (the longest side, in pixels).
SIZES = (128, 256, 512, 1024)
#: The sizes a request may ask for; each is served the next fixed size up.
REQUESTABLE = range(32, SIZES[-1] + 1)
#: What the web UI's result grid asks for (its default), made while indexing.
GRID_SIZE = 256
DEFAULT_CACHE_BYTES = 2 * 1000**3
#: A cache hit refreshes the file's mtime (its last use, kept across restarts) at most this
#: often: atime cannot be relied on (relatime, noatime).
TOUCH_EVERY_S = 60.0


def fixed_size(requested: int) -> int:
    """The smallest fixed size that is at least ``requested`` (the largest, beyond it)."""
    return next((size for size in SIZES if size >= requested), SIZES[-1])


def cache_key(state: FileState, file_id: int | None = None) -> str:
    """A name for the file on disk as it was indexed: device, inode, size, mtime and ctime
    (``file_state``), so a changed file gets a new thumbnail, also one rewritten with its
    size and mtime kept. The indexer knows these before the file has a catalog id."""
    if None in (state.device, state.inode, state.ctime_ns):  # a row from before inodes were stored
        return f"id{file_id}-{state.size}-{state.mtime_ns}"
    return f"{state.device}-{state.inode}-{state.size}-{state.mtime_ns}-{state.ctime_ns}"


def render(image: Image.Image, size: int) -> bytes:
    """``image`` fitted in ``size``×``size``, never enlarged, as JPEG. ``reducing_gap``
    shrinks by whole factors first, so a full 24 MP picture costs little more than a draft."""
    ratio = min(size / image.width, size / image.height, 1.0)
    fitted = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.BICUBIC, reducing_gap=2.0)
    buffer = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def thumbnail(cache: ThumbnailCache, detail: FileDetail, size: int, read: Callable[[], bytes]) -> bytes:
    """The file's picture fitted in ``size``×``size`` (a fixed size), from the cache or made
    now and cached. ``read`` gives the file's bytes from the descriptor the server opened and
    checked (``files.py``): never the path again, which may lead elsewhere by then."""
    key = cache_key(detail, detail.id)
    data = cache.get(key, size)
    if data is None:
        picture = decode(detail.path, read(), draft_size=size).image
        data = render(picture, size)
        cache.put(key, size, data)
    return data


class ThumbnailCache:
    """The thumbnails under ``root`` (``SIZE/KEY.jpg``), at most ``max_bytes`` in all: adding
    one past the bound deletes the least recently used. What ``root`` holds is counted once,
    on first use (a restarted server keeps its bound and the order of use, from mtimes).
    Thread-safe; one server per library is assumed (a second keeps its own count)."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root, self.max_bytes = Path(root), max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[Path, list] | None = None  # path -> [bytes, last touched]; oldest first
        self._total = 0

    def get(self, key: str, size: int) -> bytes | None:
        """The cached thumbnail, or None (never made, dropped, or cut short by a crash)."""
        path = self._path(key, size)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if not data.endswith(b"\xff\xd9"):  # written without fsync: a power cut can cut it short
            return None
        with self._lock:
            entries = self._load()
            entry = entries.get(path)
            if entry is not None:  # else dropped meanwhile (its bytes were read already)
                entries.move_to_end(path)
                if time.monotonic() - entry[1] > TOUCH_EVERY_S:
                    entry[1] = time.monotonic()
                    _touch(path)
        return data

    def put(self, key: str, size: int, data: bytes) -> None:
        """Keep ``data``; a read-only library or a full disk only means it is not kept."""
        if len(data) > self.max_bytes:
            return
        path = self._path(key, size)
        staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(data)  # no fsync: a cache, and fsync cost 1-20 ms per photo indexed
            os.replace(staged, path)
        except OSError:
            staged.unlink(missing_ok=True)
            return
        with self._lock:
            self._load()
            self._add(path, len(data))

    def keep_grid(self, state: FileState, picture: Image.Image) -> None:
        """While indexing (``index_folders``' ``on_picture``): the grid's thumbnail of a
        file just decoded, from its decoded picture (at least 448 pixels a side when the
        photo is larger: JPEG draft keeps twice the model's input)."""
        self.put(cache_key(state), GRID_SIZE, render(picture, GRID_SIZE))

    def total_bytes(self) -> int:
        with self._lock:
            self._load()
            return self._total

    def _path(self, key: str, size: int) -> Path:
        return self.root / str(size) / f"{key}.jpg"

    def _add(self, path: Path, count: int) -> None:
        """Count ``path`` as just used, then drop the least recently used past the bound."""
        entries = self._load()
        old = entries.pop(path, None)
        self._total += count - (old[0] if old else 0)
        entries[path] = [count, time.monotonic()]
        self._evict(keep=1)

    def _evict(self, keep: int) -> None:
        """Delete the least recently used until the bound holds (the last ``keep`` stay)."""
        entries = self._load()
        while self._total > self.max_bytes and len(entries) > keep:
            oldest, (dropped, _touched) = entries.popitem(last=False)
            oldest.unlink(missing_ok=True)
            self._total -= dropped

    def _load(self) -> OrderedDict[Path, list]:
        """What ``root`` holds, least recently used first. Folders of sizes no longer made
        (any size was cached before) are deleted: nothing reads them any more."""
        if self._entries is not None:
            return self._entries
        found = []
        try:
            size_dirs = list(os.scandir(self.root))
        except OSError:
            size_dirs = []
        for size_dir in size_dirs:
            if not size_dir.is_dir(follow_symlinks=False):
                continue
            if size_dir.name not in {str(size) for size in SIZES}:
                _remove_dir(Path(size_dir.path))
                continue
            for entry in os.scandir(size_dir.path):
                info = entry.stat(follow_symlinks=False)
                if entry.name.endswith(".partial"):  # a write cut short by a crash
                    if time.time() - info.st_mtime > 3600:
                        Path(entry.path).unlink(missing_ok=True)
                elif entry.name.endswith(".jpg"):
                    found.append((info.st_mtime_ns, Path(entry.path), info.st_size))
        self._entries = OrderedDict((path, [count, 0.0]) for _mtime, path, count in sorted(found))
        self._total = sum(count for _mtime, _path, count in found)
        self._evict(keep=0)  # the bound may have been lowered since
        return self._entries


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _remove_dir(path: Path) -> None:
    try:
        for entry in os.scandir(path):
            Path(entry.path).unlink(missing_ok=True)
        path.rmdir()
    except OSError:  # not ours to remove, or in use: left as it is
        pass
