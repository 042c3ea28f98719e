"""JPEG thumbnails of indexed files, made once and kept in the library folder."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from dreamsearch.atomic import write_atomically
from dreamsearch.catalog import FileDetail
from dreamsearch.images import decode

SIZES = range(32, 1025)


def thumbnail(cache: Path, detail: FileDetail, size: int) -> bytes:
    """The file's picture fitted in ``size``×``size`` pixels, as JPEG. Cached under the
    file's id and its state on disk (size, mtime, inode, ctime), so a changed file gets a
    new thumbnail, also one rewritten with its size and mtime kept."""
    target = cache / str(size) / f"{detail.id}-{detail.size}-{detail.mtime_ns}-{detail.inode}-{detail.ctime_ns}.jpg"
    try:
        return target.read_bytes()
    except FileNotFoundError:
        pass
    picture = decode(detail.path, draft_size=size).image
    picture = ImageOps.contain(picture, (size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
    except OSError:  # a read-only library or a full disk: serve it uncached
        pass
    return data
