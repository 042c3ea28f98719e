"""Pictures of results for people: a contact sheet (PNG) and a self-contained HTML page.

Both show rows of captioned thumbnails (a query and its results, one model's answers in
``compare``, or one group of ``duplicates``), so every command shares one layout. A sheet
wraps each row's tiles into lines that fit a screen; ``compare``'s page sets its models'
rows side by side.
Thumbnails are decoded like everything else (EXIF orientation applied, odd modes
converted); a file that cannot be read any more gets a grey tile that says so.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from dreamsearch.atomic import staged_file
from dreamsearch.display import human_bytes, printable
from dreamsearch.errors import DreamsearchError, ImageError
from dreamsearch.images import decode

if TYPE_CHECKING:
    from dreamsearch.duplicates import DuplicateGroup
    from dreamsearch.search import Match

THUMB = 160
MAX_COLUMNS = 8  # tiles per line of a sheet: 8 × 168 + 8 = 1352 px wide
_PAD = 8
_LABEL_H = 22
_CAPTION_H = 34
_BACKGROUND = (255, 255, 255)
_MISSING = (200, 200, 200)


@dataclass(frozen=True)
class Tile:
    """One thumbnail: the image at ``path`` with ``caption`` under it (e.g. ``#3 0.0412``);
    ``also``: other paths of the same bytes, linked under it on the HTML page."""

    path: str
    caption: str
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    label: str
    tiles: tuple[Tile, ...]


def write_png(rows: Sequence[Row], out: Path, thumb: int = THUMB) -> None:
    """Draw ``rows`` as one contact sheet at ``out`` (format from the suffix, PNG advised):
    each row's label, then its tiles wrapped ``MAX_COLUMNS`` to a line, since one long strip
    is unreadable once fitted to a screen."""
    picture_format = _image_format(out)  # refuse a bad name before decoding anything
    images = _thumbnails(rows, thumb)
    columns = min(MAX_COLUMNS, max((len(row.tiles) for row in rows), default=1)) or 1
    cell_w, cell_h = thumb + _PAD, thumb + _CAPTION_H + _PAD
    lines = [-(-len(row.tiles) // columns) for row in rows]
    sheet = Image.new("RGB", (_PAD + columns * cell_w, _PAD + sum(_LABEL_H + n * cell_h for n in lines)), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    top = _PAD
    for row, n in zip(rows, lines, strict=True):
        draw.text((_PAD, top + 4), _fit(printable(row.label), columns * cell_w // 7), fill=(0, 0, 0), font=font)
        top += _LABEL_H
        for index, tile in enumerate(row.tiles):
            left, image_top = _PAD + index % columns * cell_w, top + index // columns * cell_h
            image = images[tile.path]
            if image is None:
                draw.rectangle((left, image_top, left + thumb - 1, image_top + thumb - 1), fill=_MISSING)
                draw.text((left + 6, image_top + thumb // 2 - 6), "unreadable", fill=(80, 80, 80), font=font)
            else:
                sheet.paste(image, (left + (thumb - image.width) // 2, image_top + (thumb - image.height) // 2))
            name = _fit(printable(os.path.basename(tile.path)), thumb // 7)
            draw.text((left, image_top + thumb + 3), tile.caption, fill=(0, 0, 0), font=font)
            draw.text((left, image_top + thumb + 18), name, fill=(90, 90, 90), font=font)
        top += n * cell_h
    _save(out, lambda stream, fmt: sheet.save(stream, format=fmt), picture_format)


def write_html(
    rows: Sequence[Row],
    out: Path,
    title: str,
    thumb: int = THUMB,
    *,
    table: Sequence[Sequence[str]] = (),
    side_by_side: Sequence[Row] = (),
) -> None:
    """Write ``rows`` as one HTML page with the thumbnails embedded (it can be mailed or
    moved on its own); each thumbnail links to its file. ``table`` (header row first) goes
    under the title; ``side_by_side`` rows follow ``rows`` as columns, to compare them."""
    images = _thumbnails([*rows, *side_by_side], thumb)
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(printable(title))}</title>',
        # %-formatting: CSS's braces would all need doubling in an f-string
        "<style>body{font-family:sans-serif;margin:1em}section{margin-bottom:1.5em}"  # noqa: UP031
        ".columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(%dpx,1fr));column-gap:1em}"
        "table{border-collapse:collapse;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:.2em .6em}"
        "figure{display:inline-block;vertical-align:top;margin:0 .5em .5em 0;width:%dpx}"
        "figure img,figure .missing{width:%dpx;height:%dpx;object-fit:contain;background:#eee}"
        "figcaption{font-size:12px;word-break:break-all}</style></head><body>" % (thumb + 16, thumb, thumb, thumb),
        f"<h1>{html.escape(printable(title))}</h1>",
        _html_table(table),
    ]
    for index, row in enumerate([*rows, *side_by_side]):
        if index == len(rows):
            parts.append('<div class="columns">')
        parts.append(f"<section><h2>{html.escape(printable(row.label))}</h2>")
        for tile in row.tiles:
            image = images[tile.path]
            name = html.escape(printable(tile.path))
            picture = (
                f'<img src="{_data_uri(image)}" alt="{name}">'
                if image is not None
                else '<div class="missing">unreadable</div>'
            )
            also = "".join(
                f'<br>also <a href="{html.escape(_file_uri(path))}">{html.escape(printable(path))}</a>'
                for path in tile.also
            )
            parts.append(
                f'<figure><a href="{html.escape(_file_uri(tile.path))}">{picture}</a>'
                f"<figcaption><b>{html.escape(tile.caption)}</b><br>{name}{also}</figcaption></figure>"
            )
        parts.append("</section>")
    if side_by_side:
        parts.append("</div>")
    parts.append("</body></html>\n")
    text = "\n".join(parts)
    _save(out, lambda stream, _fmt: stream.write(text.encode("utf-8")), None)


def _html_table(table: Sequence[Sequence[str]]) -> str:
    """``table`` as an HTML table, its first row the header; nothing when it is empty."""
    lines = []
    for number, row in enumerate(table):
        tag = "th" if number == 0 else "td"
        lines.append("<tr>" + "".join(f"<{tag}>{html.escape(printable(cell))}</{tag}>" for cell in row) + "</tr>")
    return f"<table>{''.join(lines)}</table>" if lines else ""


def result_row(label: str, queries: Sequence[str], matches: Sequence[Match], model: str) -> Row:
    """A query's row: the query image(s), then each result with its rank and distance (and,
    on the HTML page, the other paths of the same file)."""
    tiles = [Tile(path, "query") for path in queries]
    return Row(f"{label} ({model})", (*tiles, *_result_tiles(matches)))


def comparison_rows(query: str, k: int, results: Mapping[str, Sequence[Match]]) -> list[Row]:
    """``compare``'s rows: the query under a title, then one row per model, its name above
    its results (``write_html`` can show the model rows side by side)."""
    return [
        Row(f"{query}: top {k} per model", (Tile(query, "query"),)),
        *(Row(name, _result_tiles(matches)) for name, matches in results.items()),
    ]


def _result_tiles(matches: Sequence[Match]) -> tuple[Tile, ...]:
    return tuple(Tile(m.path, f"#{m.rank}  {m.distance:.4f}", tuple(m.also_at)) for m in matches)


def duplicate_rows(groups: Sequence[DuplicateGroup]) -> list[Row]:
    """A summary row (what could go), then one row per group: the keeper first, marked KEEP,
    then the others with their distance to it; each with its pixels and size. An identical
    group is one thumbnail (its files are one picture) with every other path linked."""
    from dreamsearch.duplicates import identical_copies, summarize

    summary = summarize(groups)
    rows = [
        Row(
            f"{summary.removable_files} files could go, freeing {human_bytes(summary.removable_bytes)}: "
            f"{summary.identical_groups} identical and {summary.similar_groups} similar groups",
            (),
        )
    ]
    copies = identical_copies(groups)
    for number, g in enumerate(groups, 1):
        label = f"{g.kind} group {number}: {len(g.files)} files"
        if g.kind == "identical":
            caption = f"KEEP · ×{len(g.files)} identical · {g.keeper.dimensions} · {human_bytes(g.keeper.size)}"
            rows.append(Row(label, (Tile(g.keeper.path, caption, tuple(f.path for f in g.others)),)))
            continue
        tiles = []
        for f in g.files:
            caption = f"{'KEEP' if f is g.keeper else f'{f.distance:.4f}'} · {f.dimensions} · {human_bytes(f.size)}"
            if f.id in copies:
                caption += " · ×{1} identical: group {0}".format(*copies[f.id])
            tiles.append(Tile(f.path, caption))
        rows.append(Row(label, tuple(tiles)))
    return rows


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
                image.thumbnail((thumb, thumb), Image.Resampling.BICUBIC)
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
    try:
        with staged_file(out) as temp, open(temp, "wb") as stream:
            write(stream, fmt)
    except OSError as exc:
        raise DreamsearchError(f"{out}: cannot write ({exc.strerror or exc})") from None
