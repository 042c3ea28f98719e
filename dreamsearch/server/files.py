"""Indexed files opened for sending: opened first, then judged on the open descriptor, and
read only through it, never through the path again.

Why: a check of a path followed by an open of the same path is a race. In issue 21 a local
user who owned an indexed folder flipped it between the real folder and a symbolic link to
another user's folder while asking for an original: 71 of 2,925 answers were that user's
0600 key (149 of 2,400 were /etc/shadow with the server running as root), and the race
also gave 500s and Content-Lengths that did not match the body.

What is decided on the descriptor:

- The last component is opened with ``O_NOFOLLOW``, and on Linux with ``O_PATH``: nothing
  is read yet, and nothing but a regular file is ever really opened (opening a device can
  act: ``/dev/watchdog`` arms a reboot; ``O_NONBLOCK`` keeps a FIFO from blocking).
- It is a regular file with the indexed size, mtime, inode, device and ctime
  (``file_state``): the very file that was indexed, unchanged since. Nothing can set a ctime
  back, and writing, renaming or linking the file changes it.
- Its real path (``/proc/self/fd/N``) is inside an indexed folder. A file indexed through a
  followed symbolic link (``index --follow-symlinks``) lives elsewhere: it is served when its
  stored device, inode and ctime are all known and match, which only the file that the
  indexer found through that link can do ("inside the folder as it was indexed").
- On Linux the checked ``O_PATH`` descriptor is then opened for reading through
  ``/proc/self/fd/N``: the same inode, whatever the path has become meanwhile.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from urllib.parse import quote

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dreamsearch.catalog import FileDetail
from dreamsearch.errors import NotFoundError
from dreamsearch.file_state import observed

#: What an original may be sent as, by the format the decoder found when indexing it: only
#: pictures a browser shows and never runs. Anything else is a download.
IMAGE_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}
#: An original opened in a tab is a document of its own: no script, no plugin, an opaque
#: origin (``sandbox``), nothing else loaded, never in a frame. Browsers still show the
#: picture (tested in Chromium).
ORIGINAL_POLICY = "sandbox; default-src 'none'; frame-ancestors 'none'"
CHUNK = 256 * 1024

_O_PATH = getattr(os, "O_PATH", 0)  # Linux
_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class OpenedFile:
    """An indexed file open for reading and checked (``open_indexed``); close it, or hand
    it to a ``FileSent`` response, which does."""

    def __init__(self, detail: FileDetail, descriptor: int, info: os.stat_result) -> None:
        self.detail, self.descriptor, self.info = detail, descriptor, info

    @property
    def media_type(self) -> str | None:
        """The image type to send it as, or None: not a picture a browser may show inline."""
        return IMAGE_TYPES.get(self.detail.format or "")

    def read(self) -> bytes:
        """All its bytes, as indexed (a file changed or cut short meanwhile is a 404)."""
        parts, offset = [], 0
        while offset < self.info.st_size:
            part = os.pread(self.descriptor, min(CHUNK * 16, self.info.st_size - offset), offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
        self.check_unchanged(offset)
        return b"".join(parts)

    def check_unchanged(self, sent: int) -> None:
        """Raise NotFoundError if the file was written to while it was read."""
        if sent != self.info.st_size or observed(os.fstat(self.descriptor)) != observed(self.info):
            raise NotFoundError(f"file {self.detail.id} changed on disk while it was read")

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_indexed(detail: FileDetail, roots: Iterable[str]) -> OpenedFile:
    """``detail``'s file opened for reading, if it is the file indexed there (see the module
    docstring); NotFoundError (HTTP 404) otherwise, naming only the id."""
    complete = None not in (detail.inode, detail.device, detail.ctime_ns)
    try:
        handle = _open(detail.path, follow_last_link=complete)
    except OSError as exc:
        gone = exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
        raise NotFoundError(f"file {detail.id} is {'gone' if gone else 'unreadable'} on disk") from None
    handed_over = False
    try:
        info = os.fstat(handle)
        if not (stat.S_ISREG(info.st_mode) and _as_indexed(detail, info)):
            raise NotFoundError(f"file {detail.id} is not on disk as it was indexed")
        if not (complete or _inside(_real_path(handle), roots)):
            raise NotFoundError(f"file {detail.id} is not inside an indexed folder")
        if not _O_PATH:  # already open for reading
            handed_over = True
            return OpenedFile(detail, handle, info)
        return OpenedFile(detail, _reopen(handle, info), info)
    except OSError:  # e.g. a file the server's user may not read
        raise NotFoundError(f"file {detail.id} is unreadable on disk") from None
    finally:
        if not handed_over:
            os.close(handle)


def _open(path: str, follow_last_link: bool) -> int:
    """A descriptor of ``path`` that reads nothing yet where the system allows (``O_PATH``).
    The last component is not followed, unless it is a symbolic link and
    ``follow_last_link`` (a file indexed through a followed link, judged by its identity)."""
    flags = (_O_PATH or _READ) | getattr(os, "O_CLOEXEC", 0)
    try:
        handle = os.open(path, flags | os.O_NOFOLLOW)
    except OSError as exc:  # without O_PATH, a link as last component is ELOOP
        if exc.errno != errno.ELOOP or not follow_last_link:
            raise
        return os.open(path, flags)
    if _O_PATH and stat.S_ISLNK(os.fstat(handle).st_mode):  # O_PATH | O_NOFOLLOW opened the link
        os.close(handle)
        if not follow_last_link:
            raise OSError(errno.ELOOP, "a symbolic link", path)
        handle = os.open(path, flags)
    return handle


def _reopen(handle: int, info: os.stat_result) -> int:
    """The checked ``O_PATH`` descriptor opened for reading: the same inode, not the path."""
    readable = os.open(f"/proc/self/fd/{handle}", _READ)
    seen = os.fstat(readable)
    if (seen.st_dev, seen.st_ino) != (info.st_dev, info.st_ino):  # cannot happen; never send on a doubt
        os.close(readable)
        raise NotFoundError("the file changed while it was opened")
    return readable


def _as_indexed(detail: FileDetail, info: os.stat_result) -> bool:
    """Size, mtime, inode, device and ctime as stored (those a row from before inodes were
    stored lacks are not compared; such a file must then be inside an indexed folder)."""
    stored = (detail.size, detail.mtime_ns, detail.inode, detail.device, detail.ctime_ns)
    return all(value is None or value == seen for value, seen in zip(stored, observed(info), strict=True))


def _real_path(handle: int) -> str | None:
    try:
        real = os.readlink(f"/proc/self/fd/{handle}")
    except OSError:  # no /proc: only the identity can tell
        return None
    return None if real.endswith(" (deleted)") else real


def _inside(real: str | None, roots: Iterable[str]) -> bool:
    return real is not None and any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)


class FileSent(Response):
    """An opened file sent from its descriptor (and closed after, whatever happens). A file
    written to while it is sent is cut off rather than finished with other bytes: the client
    sees a short body, never a wrong one."""

    def __init__(self, opened: OpenedFile, headers: dict[str, str] | None = None) -> None:
        self.opened = opened
        kind = "inline" if opened.media_type else "attachment"
        super().__init__(
            media_type=opened.media_type or "application/octet-stream",
            headers={
                "Content-Disposition": _disposition(kind, os.path.basename(opened.detail.path)),
                "Content-Length": str(opened.info.st_size),
                **(headers or {}),
            },
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opened = self.opened
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            offset, size = 0, opened.info.st_size
            while offset < size:
                chunk = await anyio.to_thread.run_sync(os.pread, opened.descriptor, min(CHUNK, size - offset), offset)
                if not chunk or offset + len(chunk) == size:
                    opened.check_unchanged(offset + len(chunk))  # before the last bytes go out
                offset += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": offset < size})
            if size == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            opened.close()


def _disposition(kind: str, name: str) -> str:
    """``inline``/``attachment`` with the file's name: a plain ASCII fallback (no quotes,
    backslashes or control characters) and the exact name as RFC 5987 UTF-8; a name that is
    not UTF-8 keeps its bytes (``surrogateescape``)."""
    plain = re.sub(r'[^\x20-\x7e]|["\\]', "_", name)
    exact = quote(name, safe="", errors="surrogateescape")
    return f"{kind}; filename=\"{plain}\"; filename*=utf-8''{exact}"
