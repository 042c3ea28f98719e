"""Turn an image file into an RGB picture, and into each model's input pixels, the same
way for every command.

Decisions (see docs/models.md):
- EXIF orientation is applied, so a photo embeds as it is seen.
- Transparency is composited on white; the official DreamSim preprocessing drops alpha
  (``convert('RGB')``), which turns transparent pixels into whatever colour they hide.
- 16-bit and 32-bit greyscale are scaled to 8 bits (Pillow's plain ``convert`` clips them).
- Animated images use their first frame.

Pillow and numpy release the GIL for the heavy part, so the indexer's threads decode in
parallel with each other and with the model. ``decode_bytes`` returns every outcome as
data, never raised: a bad file becomes a one-line reason.
"""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dreamsearch.defaults import DEFAULT_MAX_PIXELS
from dreamsearch.errors import ImageError, PixelLimitError
from dreamsearch.reading import NOT_REGULAR_FILE

_HEIF_REGISTERED = False
_PILLOW_LIMIT_LOCK = threading.Lock()
_BOMB_WARNINGS_ARE_ERRORS = False


def _register_heif() -> None:
    global _HEIF_REGISTERED
    if not _HEIF_REGISTERED:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
            pass
        else:
            register_heif_opener()
        _HEIF_REGISTERED = True


@dataclass(frozen=True)
class Picture:
    """A decoded picture and what the file says of itself: its pixel size as displayed
    (after EXIF rotation, before any draft reduction) and its format name."""

    image: Image.Image
    width: int
    height: int
    format: str


def open_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully into an 8-bit RGB image, or raise :class:`ImageError`.

    The whole file is decoded (no JPEG draft mode) so results match the official
    DreamSim preprocessing bit for bit on ordinary RGB and greyscale files.
    """
    return decode(path, max_pixels=max_pixels).image


def decode(
    path: str | Path, data: bytes | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int = 0
) -> Picture:
    """Decode ``data`` (or the file at ``path``) into RGB, or raise :class:`ImageError`
    naming ``path``. ``draft_size`` > 0 lets JPEG decode at a reduced scale (DCT domain)
    that still leaves at least that many pixels on each side: 3-4× faster for photos."""
    _register_heif()
    _raise_pillow_limit(max_pixels)
    path = Path(path)
    try:
        with _source(path, data) as source, Image.open(source) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise PixelLimitError(path, _over_the_limit(f"{width * height:,}", max_pixels))
            file_format = img.format or "unknown"
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
            img.seek(0)
            if draft_size and img.format in ("JPEG", "MPO"):  # MPO: a JPEG with extra pictures
                img.draft("RGB", (draft_size, draft_size))
            elif draft_size and img.format == "WEBP" and not getattr(img, "is_animated", False):
                reduced = _reduced_webp(source, img, draft_size)
                if reduced is not None:
                    return Picture(to_rgb(reduced), width, height, file_format)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # a copy of a 12 MP picture otherwise, turned or not
            rgb = to_rgb(img)
            if draft_size and file_format not in ("JPEG", "MPO"):  # JPEGs were drafted above
                rgb = _reduced(rgb, draft_size)
            return Picture(rgb, width, height, file_format)
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except UnidentifiedImageError:
        empty = data == b"" if data is not None else _is_empty(path)
        raise ImageError(path, "empty file" if empty else "not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check ran first (its limit is never below ``max_pixels``): say it in
        # the same words, with our limit rather than Pillow's. Which check runs first depends
        # on the process's warning filters, so the reason must not (Ray workers, tests).
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise PixelLimitError(path, _over_the_limit(f"{int(size[1]):,}" if size else None, max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"cannot decode: {exc}") from None


def _reduced(img: Image.Image, draft_size: int) -> Image.Image:
    """A picture no decoder could reduce (PNG, TIFF, HEIC, ...) shrunk 2, 4 or 8 times by
    averaging pixel blocks: the bicubic resize to the model's input then reads a quarter
    or less of the pixels (a 3840x2160 PNG spent 66 ms of its 193 ms preprocessing). Box
    averaging smooths more than the DCT scaling of JPEG draft, so it keeps 1.5x as many
    pixels (three times the model's input): on 57 PNGs the input then differs from the
    full resize by max 2/255, mean 0.16/255, as JPEG draft does; at JPEG's twice the
    input, max 4/255 (docs/indexing.md#reduced-scale-jpeg-and-webp-decoding-draft)."""
    factor = _draft_factor(img.size, draft_size * 3 // 2)
    return img if factor == 1 else img.reduce(factor)


def _draft_factor(size: tuple[int, int], draft_size: int) -> int:
    """The largest of 1/8, 1/4, 1/2 that leaves ``draft_size`` pixels on the short side."""
    return next((f for f in (8, 4, 2) if min(size) // f >= draft_size), 1)


def _reduced_webp(source: BinaryIO, img: Image.Image, draft_size: int) -> Image.Image | None:
    """A still WebP decoded at 1/2, 1/4 or 1/8 scale (libwebp scales while decoding, through
    libvips), keeping at least ``draft_size`` pixels on each side as JPEG draft does, and
    turned as its EXIF says; None when it is too small to reduce. Pillow decodes a WebP
    whole: a 16383x12000 upload took 3 GB (issue 21); reduced, its pixels take 1/64 of it."""
    factor = _draft_factor(img.size, draft_size)
    if factor == 1:
        return None
    pyvips = _vips()
    source.seek(0)
    try:
        reduced = pyvips.Image.new_from_buffer(source.read(), "", scale=1 / factor, access="sequential")
        pixels = np.ndarray(
            buffer=reduced.write_to_memory(), dtype=np.uint8, shape=(reduced.height, reduced.width, reduced.bands)
        )
    except pyvips.Error as exc:
        raise ValueError(str(exc).strip().splitlines()[-1]) from None
    picture = Image.fromarray(pixels[..., 0] if reduced.bands == 1 else pixels)
    for key in ("exif", "xmp"):  # what exif_transpose reads the orientation from
        if key in img.info:
            picture.info[key] = img.info[key]
    return ImageOps.exif_transpose(picture)


def _vips():
    """libvips, set for decoding in our own threads: one thread per call (the callers are
    already one per core) and no operation cache (it would keep decoded pixels alive)."""
    global _VIPS
    if _VIPS is None:
        import pyvips

        pyvips.concurrency_set(1)
        pyvips.cache_set_max(0)
        _VIPS = pyvips
    return _VIPS


_VIPS = None


def _source(path: Path, data: bytes | None) -> BinaryIO:
    """``data``, or the file at ``path`` if it is a regular file. It is opened without
    blocking and checked before reading: a FIFO would otherwise wait for a writer forever."""
    if data is not None:
        return io.BytesIO(data)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket
            raise ImageError(path, NOT_REGULAR_FILE) from None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise ImageError(path, NOT_REGULAR_FILE)
        return open(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _over_the_limit(pixels: str | None, max_pixels: int) -> str:
    if pixels is None:
        return f"over the limit of {max_pixels:,} pixels (a decompression bomb?)"
    return f"{pixels} pixels is over the limit of {max_pixels:,} (a decompression bomb?)"


def _raise_pillow_limit(max_pixels: int) -> None:
    """Let ``max_pixels`` decide. Pillow checks its own process-wide limit while opening
    (a warning over ``Image.MAX_IMAGE_PIXELS``, ~89 MP, which we turn into an error, and
    an error over twice that) before our exact per-call check on the size can run, so
    ``--max-pixels 300000000`` would still refuse a 101 MP photo. The limit is only ever
    raised, under a lock: concurrent decodes with different limits never lower it under
    each other, and Pillow's own checks (also made during loading, per frame or tile)
    still fire above the largest limit asked for. ``None`` (checks off) is left alone."""
    with _PILLOW_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
        global _BOMB_WARNINGS_ARE_ERRORS
        if not _BOMB_WARNINGS_ARE_ERRORS:
            # Once per process rather than ``warnings.catch_warnings`` around each decode:
            # that swaps the process-wide filter list and is not safe in decode threads.
            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
            _BOMB_WARNINGS_ARE_ERRORS = True


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB deliberately (alpha on white, wide ints scaled)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    values = pixels.astype(np.float64)
    if mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
    else:
        top = 65535.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def resize_squash(img: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize to ``size``×``size`` ignoring aspect ratio, as DreamSim was trained.

    Returns ``uint8 [size, size, 3]``; scaling to [0, 1] happens on the model's device.
    """
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def resize_center_crop(
    img: Image.Image, resize: int, crop: int, resample: int = Image.Resampling.BICUBIC
) -> np.ndarray:
    """Resize the short side to ``resize``, then take the central ``crop`` square: the
    classic ImageNet / CLIP evaluation transform, with torchvision's rounding (long side
    truncated, crop offsets rounded) so baselines see exactly what their authors used.
    Returns ``uint8 [crop, crop, 3]``."""
    width, height = img.size
    if width <= height:
        new_size = (resize, int(resize * height / width))
    else:
        new_size = (int(resize * width / height), resize)
    resized = img.resize(new_size, resample)
    left = int(round((new_size[0] - crop) / 2.0))
    top = int(round((new_size[1] - crop) / 2.0))
    return np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


@dataclass(frozen=True)
class Preprocess:
    """How an embedder wants its pixels, as a picklable recipe that decode workers run:
    squash to ``size``×``size`` (``resize`` 0, DreamSim), or short side to ``resize`` then
    a central ``size`` crop (the baselines)."""

    size: int
    resize: int = 0
    resample: int = Image.Resampling.BICUBIC

    @property
    def draft_size(self) -> int:
        """JPEG draft target: twice the largest side we resample from keeps bicubic quality."""
        return 2 * max(self.size, self.resize)

    def __call__(self, image: Image.Image) -> np.ndarray:
        if self.resize:
            return resize_center_crop(image, self.resize, self.size, self.resample)
        return resize_squash(image, self.size)


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
