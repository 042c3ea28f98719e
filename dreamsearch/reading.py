"""Read a listed file's bytes once, safely, and name its content.

Everything after the scan works from these bytes: the hash decides between "copy or
move" and "decode", and the decoder reads the same buffer, so a new photo costs one
read. Only regular files are read (a FIFO or device put in a photo's place after the
scan would block or never end), never more than a size limit (a sparse 30 GB ``.jpg``
would otherwise end in ``MemoryError``), and every failure is a one-line reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

from dreamsearch.display import human_bytes

#: Files larger than this are recorded as failed unread (``--max-file-size``).
DEFAULT_MAX_FILE_SIZE = 2 * 1024**3
#: The reason given for a FIFO, socket or device wherever a file is expected.
NOT_REGULAR_FILE = "not a regular file (a pipe, socket or device)"


@dataclass(frozen=True)
class FileBytes:
    """A file's whole content, or why it could not be read (``data`` is then empty)."""

    data: bytes = b""
    error: str | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.data)


def content_hash(data: bytes) -> str:
    """BLAKE2b-256: the content identity shared by copies and moves. About 1 GB/s per
    core, faster than the decode that follows and than most disks (docs/indexing.md)."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def read_file(path: str, max_size: int = DEFAULT_MAX_FILE_SIZE) -> FileBytes:
    """The bytes of the regular file ``path``, read in one go, or a reason."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return FileBytes(error=read_failure(exc))
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            return FileBytes(error="is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            return FileBytes(error=NOT_REGULAR_FILE)
        if info.st_size > max_size:
            return FileBytes(
                error=f"{human_bytes(info.st_size)} is over the file size limit of {human_bytes(max_size)} "
                "(--max-file-size)"
            )
        with os.fdopen(descriptor, "rb", closefd=True) as handle:
            descriptor = -1
            # Ask for what fstat said (read(n) reserves n bytes up front), then for the
            # rest only if the file grew meanwhile.
            data = handle.read(info.st_size + 1)
            if len(data) > info.st_size:
                data += handle.read(max_size + 1 - len(data))
        if len(data) > max_size:  # it grew while we read
            return FileBytes(error=f"grew over the file size limit of {human_bytes(max_size)} while being read")
        return FileBytes(data)
    except OSError as exc:
        return FileBytes(error=read_failure(exc))
    except MemoryError:
        return FileBytes(error=f"not enough memory to read {human_bytes(info.st_size)}")
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def read_failure(exc: OSError) -> str:
    """One reason per way a listed file can fail to read, the same in every pass."""
    if isinstance(exc, FileNotFoundError):
        return "vanished before it could be read"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ENXIO:  # what opening a socket (or a device with no driver) says
        return NOT_REGULAR_FILE
    return f"cannot read: {exc.strerror or exc}"
