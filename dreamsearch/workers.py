"""Work done in the indexer's decode threads: hashing and decoding files.

Pillow, numpy and hashlib only; all three release the GIL for the heavy part, so threads
decode in parallel with each other and with the model. Every outcome is returned as
data, never raised: a bad file becomes a one-line reason.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from dataclasses import dataclass

import numpy as np

from dreamsearch.errors import ImageError
from dreamsearch.images import Preprocess, decode

_CHUNK = 1 << 20
#: Seconds one file may take to decode before it is recorded as failed.
DECODE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Hashed:
    path: str
    content_hash: str | None
    error: str | None = None


@dataclass(frozen=True)
class DecodeJob:
    path: str
    preprocess: tuple[Preprocess, ...]
    max_pixels: int
    timeout_s: float
    draft: bool


@dataclass(frozen=True)
class Decoded:
    """``pixels[i]`` is the input of the i-th model; empty with ``error`` set on failure."""

    path: str
    content_hash: str | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    pixels: tuple[np.ndarray, ...] = ()
    error: str | None = None


class _DecodeTimeout(Exception):
    pass


def hash_file(path: str) -> Hashed:
    """BLAKE2b-256 of the file's bytes: the content identity shared by copies and moves."""
    digest = hashlib.blake2b(digest_size=32)
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        return Hashed(path, None, _read_failure(exc))
    return Hashed(path, digest.hexdigest())


def decode_file(job: DecodeJob) -> Decoded:
    """Read, hash and decode one file, then preprocess it for each model."""
    try:
        with open(job.path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return Decoded(job.path, error=_read_failure(exc))
    content_hash = hashlib.blake2b(data, digest_size=32).hexdigest()
    draft = max(p.draft_size for p in job.preprocess) if job.draft else 0
    # The time limit uses SIGALRM, which only the main thread may arm (in-process decoding,
    # workers=0); the indexer's decode threads are limited by the indexer itself, and an
    # API query from an app's worker thread decodes without a limit.
    timed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _raise_timeout) if timed else None
    if timed:
        signal.setitimer(signal.ITIMER_REAL, job.timeout_s)
    try:
        picture = decode(job.path, data=data, max_pixels=job.max_pixels, draft_size=draft)
        pixels = tuple(p(picture.image) for p in job.preprocess)
    except ImageError as exc:
        return Decoded(job.path, content_hash, error=exc.reason)
    except _DecodeTimeout:
        return Decoded(job.path, content_hash, error=f"decoding took longer than {job.timeout_s:g} s")
    except MemoryError:
        return Decoded(job.path, content_hash, error="not enough memory to decode")
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return Decoded(job.path, content_hash, picture.width, picture.height, picture.format, pixels)


def _read_failure(exc: OSError) -> str:
    """One reason per way a listed file can fail to read, the same in every pass."""
    if isinstance(exc, FileNotFoundError):
        return "vanished before it could be read"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read: {exc.strerror or exc}"


def _raise_timeout(signum, frame) -> None:
    raise _DecodeTimeout()
