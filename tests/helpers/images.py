"""Pictures for tests and benchmarks: photo-like images, so JPEG coding and resampling
behave as on real photos (importable without conftest's side effects)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture with some texture, so JPEG coding behaves as on photos. (The
    suite makes ~1,000 of them, up to 1300x1000: each wave is summed into the noise in
    place, 1.5x faster than stacking whole grids, with the same pixels.)"""
    rng = np.random.default_rng(seed)
    x, y = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)[:, None]
    waves = [rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.28)] for _ in range(3)]
    pixels = rng.normal(0, 12, (height, width, 3))
    for channel, (fx, fy, phase) in enumerate(waves):
        pixels[..., channel] += 127 + 100 * np.sin(fx * x + fy * y + phase)
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))


def photo_folder(folder: Path, count: int, size: tuple[int, int], seed: int, name: str, start: int = 0, **save) -> Path:
    """Photos ``name.format(i)`` for i in ``start .. start + count - 1``, each distinct
    (seed ``seed + i``); ``save`` goes to PIL (``quality=90``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        photo_like(*size, seed + i).save(folder / name.format(i), **save)
    return folder


def make_photos(folder: Path, count: int = 6, size: tuple[int, int] = (200, 150), seed: int = 0) -> Path:
    """``p0.jpg`` .. ``p{count-1}.jpg`` at JPEG quality 90: the server tests' photo folder."""
    return photo_folder(folder, count, size, seed, "p{}.jpg", quality=90)


def pictures_with_near_copies(count: int, seed: int = 0) -> list[Image.Image]:
    """``count`` pictures, a quarter of them near copies of others (re-encoded at JPEG
    quality 40, or cropped by 1%), so duplicate decisions have pairs on both sides."""
    copies = count // 4
    pictures = [photo_like(320, 240, seed + i) for i in range(count - copies)]
    for i, original in enumerate(pictures[:copies]):
        if i % 2:
            buffer = io.BytesIO()
            original.save(buffer, "JPEG", quality=40)
            pictures.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        else:
            pictures.append(original.crop((2, 1, 318, 239)))
    return pictures


def exif(orientation: int) -> Image.Exif:
    data = Image.Exif()
    data[0x0112] = orientation
    return data


def make_messy_folder(folder: Path) -> dict[str, str]:
    """Good files of every kind, and bad ones; returns {bad file name: expected reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    photo_like(320, 240, 1).save(folder / "plain.jpg", quality=90)
    photo_like(320, 240, 2).save(folder / "rot6.jpg", exif=exif(6))
    photo_like(320, 240, 3).save(folder / "rot8.jpg", exif=exif(8))
    photo_like(320, 240, 4).save(folder / "progressive.jpg", progressive=True)
    photo_like(200, 150, 5).convert("RGBA").save(folder / "alpha.png")
    photo_like(200, 150, 6).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    Image.fromarray((np.arange(256 * 64).reshape(64, 256) % 65536).astype(np.uint16)).save(folder / "deep16.png")
    photo_like(200, 150, 7).convert("CMYK").save(folder / "cmyk.jpg")
    photo_like(200, 150, 8).convert("L").save(folder / "grey.jpg")
    frames = [photo_like(64, 64, s) for s in (9, 10)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], loop=0)
    photo_like(200, 150, 11).save(folder / "photo.webp")
    from pillow_heif import register_heif_opener

    register_heif_opener()
    photo_like(200, 150, 12).save(folder / "phone.heic")
    photo_like(120, 90, 13).save(folder / "old.bmp")
    photo_like(120, 90, 14).save(folder / "scan.tiff")
    photo_like(120, 90, 15).save(folder / "no_extension", format="PNG")  # found by its bytes
    (folder / "ラーメン.jpg").write_bytes((folder / "plain.jpg").read_bytes()[:-1] + b"\xd9")
    photo_like(100, 80, 16).save(folder / "unicode-é.png")
    with open(os.fsencode(folder) + b"/latin1-caf\xe9.jpg", "wb") as handle:
        photo_like(100, 80, 17).save(handle, "JPEG")
    buffer = io.BytesIO()
    photo_like(640, 480, 18).save(buffer, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    Image.new("1", (16000, 14000)).save(folder / "bomb.png")
    (folder / "readme.txt").write_text("ignored silently")
    os.symlink("loop", folder / "loop")  # a link to itself
    (folder / ".hidden.jpg").write_bytes((folder / "plain.jpg").read_bytes())
    (folder / "@eaDir").mkdir()
    shutil.copy(folder / "plain.jpg", folder / "@eaDir" / "thumb.jpg")
    return {
        "truncated.jpg": "cannot decode",
        "empty.jpg": "empty file",
        "notes.png": "not an image",
        "bomb.png": "decompression bomb",
    }
