"""Pictures of results for people: a contact sheet (PNG) and a self-contained HTML page.

Both show rows of captioned thumbnails (a query and its results, one model's answers in
``compare``, or one group of ``duplicates``), so every command shares one layout.
Thumbnails are decoded like everything else (EXIF orientation applied, odd modes
converted); a file that cannot be read any more gets a grey tile that says so.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from dreamsearch.errors import DreamsearchError, ImageError
from dreamsearch.images import decode
from dreamsearch.paths import printable

if TYPE_CHECKING:
    from dreamsearch.duplicates import DuplicateGroup
    from dreamsearch.search import Match

THUMB = 160
_PAD = 8
_LABEL_H = 22
_CAPTION_H = 34
_BACKGROUND = (255, 255, 255)
_MISSING = (200, 200, 200)


@dataclass(frozen=True)
class Tile:
    """One thumbnail: the image at ``path`` with ``caption`` under it (e.g. ``#3 0.0412``)."""

    path: str
    caption: str


@dataclass(frozen=True)
class Row:
    label: str
    tiles: tuple[Tile, ...]


def write_png(rows: Sequence[Row], out: Path, thumb: int = THUMB) -> None:
    """Draw ``rows`` as one contact sheet at ``out`` (format from the suffix, PNG advised)."""
    picture_format = _image_format(out)  # refuse a bad name before decoding anything
    images = _thumbnails(rows, thumb)
    columns = max((len(row.tiles) for row in rows), default=1) or 1
    cell_w, cell_h = thumb + _PAD, _LABEL_H + thumb + _CAPTION_H + _PAD
    sheet = Image.new("RGB", (_PAD + columns * cell_w, _PAD + len(rows) * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for r, row in enumerate(rows):
        top = _PAD + r * cell_h
        draw.text((_PAD, top + 4), _fit(printable(row.label), columns * cell_w // 7), fill=(0, 0, 0), font=font)
        for c, tile in enumerate(row.tiles):
            left, image_top = _PAD + c * cell_w, top + _LABEL_H
            image = images[tile.path]
            if image is None:
                draw.rectangle((left, image_top, left + thumb - 1, image_top + thumb - 1), fill=_MISSING)
                draw.text((left + 6, image_top + thumb // 2 - 6), "unreadable", fill=(80, 80, 80), font=font)
            else:
                sheet.paste(image, (left + (thumb - image.width) // 2, image_top + (thumb - image.height) // 2))
            name = _fit(printable(os.path.basename(tile.path)), thumb // 7)
            draw.text((left, image_top + thumb + 3), tile.caption, fill=(0, 0, 0), font=font)
            draw.text((left, image_top + thumb + 18), name, fill=(90, 90, 90), font=font)
    _save(out, lambda stream, fmt: sheet.save(stream, format=fmt), picture_format)


def write_html(rows: Sequence[Row], out: Path, title: str, thumb: int = THUMB) -> None:
    """Write ``rows`` as one HTML page with the thumbnails embedded (it can be mailed or
    moved on its own); each thumbnail links to its file."""
    images = _thumbnails(rows, thumb)
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(printable(title))}</title>',
        "<style>body{font-family:sans-serif;margin:1em}section{margin-bottom:1.5em}"
        "figure{display:inline-block;vertical-align:top;margin:0 .5em .5em 0;width:%dpx}"
        "figure img,figure .missing{width:%dpx;height:%dpx;object-fit:contain;background:#eee}"
        "figcaption{font-size:12px;word-break:break-all}</style></head><body>" % (thumb, thumb, thumb),
        f"<h1>{html.escape(printable(title))}</h1>",
    ]
    for row in rows:
        parts.append(f"<section><h2>{html.escape(printable(row.label))}</h2>")
        for tile in row.tiles:
            image = images[tile.path]
            name = html.escape(printable(tile.path))
            picture = (f'<img src="{_data_uri(image)}" alt="{name}">' if image is not None
                       else '<div class="missing">unreadable</div>')
            parts.append(
                f'<figure><a href="{html.escape(_file_uri(tile.path))}">{picture}</a>'
                f"<figcaption><b>{html.escape(tile.caption)}</b><br>{name}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    text = "\n".join(parts)
    _save(out, lambda stream, _fmt: stream.write(text.encode("utf-8")), None)


def result_row(label: str, queries: Sequence[str], matches: Sequence[Match], model: str) -> Row:
    """A query's row: the query image(s), then each result with its rank and distance."""
    tiles = [Tile(path, "query") for path in queries]
    tiles += [Tile(m.path, f"#{m.rank}  {m.distance:.4f}") for m in matches]
    return Row(f"{label} ({model})", tuple(tiles))


def duplicate_rows(groups: Sequence[DuplicateGroup]) -> list[Row]:
    """One row per group: the keeper first, then the others with their distance to it."""
    return [Row(f"{g.kind} group {number}: {len(g.files)} files",
                tuple(Tile(f.path, "keep" if f is g.keeper else f"{f.distance:.4f}") for f in g.files))
            for number, g in enumerate(groups, 1)]


def _thumbnails(rows: Sequence[Row], thumb: int) -> dict[str, Image.Image | None]:
    """Each distinct path decoded once (JPEG draft: thumbnails need few pixels)."""
    images: dict[str, Image.Image | None] = {}
    for row in rows:
        for tile in row.tiles:
            if tile.path not in images:
                try:
                    image = decode(tile.path, draft_size=thumb).image
                except ImageError:
                    images[tile.path] = None
                    continue
                image.thumbnail((thumb, thumb), Image.BICUBIC)
                images[tile.path] = image
    return images


def _data_uri(image: Image.Image) -> str:
    stream = io.BytesIO()
    image.save(stream, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(stream.getvalue()).decode("ascii")


def _file_uri(path: str) -> str:
    try:
        return Path(path).resolve().as_uri()
    except ValueError:
        return path


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


def _image_format(out: Path) -> str:
    extension = out.suffix.lower()
    Image.init()
    if extension not in Image.EXTENSION:
        raise DreamsearchError(f"{out}: unknown picture type '{extension or '(none)'}'; use .png or .jpg")
    return Image.EXTENSION[extension]


def _save(out: Path, write, fmt: str | None) -> None:
    """Write through a temporary file so a failed run never leaves half a picture."""
    out = Path(out)
    temp = out.with_name(f".{out.name}.partial")
    try:
        with open(temp, "wb") as stream:
            write(stream, fmt)
        os.replace(temp, out)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise DreamsearchError(f"{out}: cannot write ({exc.strerror or exc})") from None
