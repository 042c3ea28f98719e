"""Copy detection: how well a model finds an image again after everyday edits.

Each image of a folder gets one copy per transform (below), written once, with seeds
taken from the image's path, to ``<library>/eval/copies/<folder name>-<hash>/``. Originals
and copies are indexed together; every copy then queries the collection (itself left
out). Per transform:
- found@1: the first result is the original or another copy of it (same family);
- original@k: the original is among the top k;
- copy→original distance, median and 95th percentile;
- nearest other image: the 5th percentile of the distance from a copy to the closest
  image of another family. A ``duplicates --max-distance`` between the copies' p95 and
  this value groups the copies and nothing else (docs/duplicates.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from dreamsearch.atomic import staged_file
from dreamsearch.errors import ImageError
from dreamsearch.images import decode
from dreamsearch.search import Searcher


def _jpeg(quality: int) -> Callable[[Image.Image, np.random.Generator], tuple[Image.Image, int]]:
    return lambda image, _rng: (image, quality)


def _resize(image: Image.Image, _rng) -> tuple[Image.Image, int]:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS), 92


def _crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """Remove 10-30% of the area, keeping a random window of the same aspect ratio."""
    keep = np.sqrt(1.0 - rng.uniform(0.10, 0.30))
    width, height = max(1, round(image.width * keep)), max(1, round(image.height * keep))
    left = int(rng.integers(0, image.width - width + 1))
    top = int(rng.integers(0, image.height - height + 1))
    return image.crop((left, top, left + width, top + height)), 92


def _colour(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.75, 1.25)))
    return image, 92


def _rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    angle = float(rng.uniform(5, 15)) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(angle, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)), 92


def _flip(image: Image.Image, _rng) -> tuple[Image.Image, int]:
    return ImageOps.mirror(image), 92


def _text(image: Image.Image, _rng) -> tuple[Image.Image, int]:
    image = image.copy()
    size = max(10, image.height // 14)
    draw = ImageDraw.Draw(image)
    draw.text(
        (size // 2, image.height - 2 * size),
        "© dreamsearch 2026",
        fill=(255, 255, 255),
        font=ImageFont.load_default(size=size),
        stroke_width=max(1, size // 10),
        stroke_fill=(0, 0, 0),
    )
    return image, 92


#: name -> edit returning the edited image and the JPEG quality it is saved at.
TRANSFORMS: dict[str, Callable[[Image.Image, np.random.Generator], tuple[Image.Image, int]]] = {
    "jpeg-q30": _jpeg(30),
    "jpeg-q60": _jpeg(60),
    "resize-50%": _resize,
    "crop-10-30%": _crop,
    "colour-jitter": _colour,
    "rotate-5-15deg": _rotate,
    "flip": _flip,
    "text-overlay": _text,
}


@dataclass(frozen=True)
class CopyScores:
    transform: str
    copies: int
    found_at_1: float
    original_at_k: float
    distance_p50: float
    distance_p95: float
    nearest_other_p5: float


def copies_folder(eval_root: Path, folder: Path) -> Path:
    resolved = str(Path(folder).resolve())
    return eval_root / "copies" / f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def copy_path(out: Path, transform: str, relpath: str) -> Path:
    """Where the ``transform`` copy of the original at ``relpath`` goes (its whole name kept,
    ``.jpg`` appended, so ``a.png`` and ``a.jpg`` get distinct copies)."""
    return out / transform / f"{relpath}.jpg"


def make_copies(originals: list[Path], folder: Path, out: Path, report: Callable[[str], None]) -> int:
    """Write the copies that do not exist yet; returns how many originals could be read."""
    readable = 0
    for path in originals:
        relative = path.relative_to(folder).as_posix()
        targets = {name: copy_path(out, name, relative) for name in TRANSFORMS}
        try:
            image = decode(path).image if not all(t.exists() for t in targets.values()) else None
        except ImageError as exc:
            report(str(exc))
            continue
        readable += 1
        for name, target in targets.items():
            if image is None or target.exists():
                continue
            seed = int.from_bytes(hashlib.sha256(f"{name}/{relative}".encode()).digest()[:8], "little")
            edited, quality = TRANSFORMS[name](image, np.random.default_rng(seed))
            target.parent.mkdir(parents=True, exist_ok=True)
            with staged_file(target) as partial:
                edited.save(partial, format="JPEG", quality=quality)
    return readable


def evaluate_copies(
    searcher: Searcher, folder: Path, out: Path, originals: dict[str, np.ndarray], k: int
) -> list[CopyScores]:
    """Scores per transform; ``originals`` maps each indexed original's path relative to
    ``folder`` to its stored vector."""
    folder, out = Path(folder).resolve(), Path(out).resolve()

    def family(path: str) -> str | None:
        """The original's relative path, for an original or any of its copies."""
        p = Path(path)
        if p.is_relative_to(folder):
            return p.relative_to(folder).as_posix()
        if p.is_relative_to(out):
            return Path(*p.relative_to(out).parts[1:]).as_posix().removesuffix(".jpg")
        return None

    results = []
    for name in TRANSFORMS:
        found, in_top_k, distances, nearest_other = [], [], [], []
        for relpath, original_vector in sorted(originals.items()):
            copy = copy_path(out, name, relpath)
            if not copy.exists():
                continue
            vector, own = searcher.stored_vector(copy)
            matches = searcher.search(vector, k, [own], under=[folder, out])
            found.append(bool(matches) and family(matches[0].path) == relpath)
            in_top_k.append(
                any(Path(m.path) == folder / relpath or str(folder / relpath) in m.also_at for m in matches)
            )
            distances.append(max(0.0, 1.0 - float(vector @ original_vector)))
            other = next((m.distance for m in matches if family(m.path) != relpath), None)
            if other is not None:
                nearest_other.append(other)
        if found:
            p50, p95 = np.percentile(distances, [50, 95])
            results.append(
                CopyScores(
                    name,
                    len(found),
                    float(np.mean(found)),
                    float(np.mean(in_top_k)),
                    float(p50),
                    float(p95),
                    float(np.percentile(nearest_other, 5)) if nearest_other else float("nan"),
                )
            )
    return results
