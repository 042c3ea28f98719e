"""Decode a file's bytes on the CPU into each model's input pixels.

Pillow and numpy release the GIL for the heavy part, so the indexer's threads decode in
parallel with each other and with the model. Every outcome is returned as data, never
raised: a bad file becomes a one-line reason.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dreamsearch.errors import ImageError, PixelLimitError
from dreamsearch.images import Preprocess, decode

#: Seconds one file may take to read and decode before it is recorded as failed.
DECODE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Decoded:
    """``pixels[i]`` is the input of the i-th model; empty with ``error`` set on failure.
    ``width`` and ``height`` are the picture's as displayed (after EXIF rotation)."""

    width: int = 0
    height: int = 0
    format: str = ""
    pixels: tuple[np.ndarray, ...] = ()
    error: str | None = None
    too_large: bool = False  # the error is the pixel limit (a decompression bomb?)


def too_slow(seconds: float) -> str:
    """The reason recorded for a file that hit the time limit."""
    return f"reading and decoding took longer than {seconds:g} s"


class TimeLimitExceeded(BaseException):
    """A BaseException, like KeyboardInterrupt: no decoder's ``except Exception`` hides it."""


def decode_bytes(
    path: str,
    data: bytes,
    recipes: tuple[Preprocess, ...],
    max_pixels: int,
    draft: bool,
    on_picture: Callable[[Image.Image], None] | None = None,
) -> Decoded:
    """Decode ``data`` (the content of ``path``) and preprocess it for each model. With
    ``draft``, JPEGs decode at the smallest DCT scale that keeps twice each model's input
    size (see docs/indexing.md for the measured error). ``on_picture`` gets the decoded
    RGB picture (the server makes its thumbnails from it: the file is not read again)."""
    draft_size = max(r.draft_size for r in recipes) if draft else 0
    try:
        picture = decode(path, data=data, max_pixels=max_pixels, draft_size=draft_size)
        pixels = tuple(recipe(picture.image) for recipe in recipes)
    except ImageError as exc:
        return Decoded(error=exc.reason, too_large=isinstance(exc, PixelLimitError))
    except MemoryError:
        return Decoded(error="not enough memory to decode")
    except Exception as exc:  # a plugin's own error type (struct.error, KeyError, ...): one file, not the run
        return Decoded(error=f"cannot decode: {type(exc).__name__}: {exc}".splitlines()[0])
    if on_picture is not None:
        try:
            on_picture(picture.image)
        except Exception:  # noqa: BLE001 - a by-product: never fails the file; made again on demand
            pass
    return Decoded(picture.width, picture.height, picture.format, pixels)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` after ``seconds`` in the main thread (SIGALRM, which
    only the main thread may arm: decoding in-process with ``workers=0``, or a query).
    Elsewhere this does nothing: the indexer times its worker threads itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
