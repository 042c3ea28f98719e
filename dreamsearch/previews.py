"""Result thumbnails drawn in the terminal, after the table (``query`` and ``compare``
``--preview``), so a person sees what was found without opening a picture viewer.

How a picture is drawn depends on what the terminal can show: the kitty graphics protocol
or sixel (textual-image's renderables; it asks the terminal which it has), iTerm2's inline
images (which iTerm2 never reports when asked, so it is known by the ``TERM_PROGRAM`` or
``LC_TERMINAL`` it sets; textual-image has no renderer for it, so the escape sequence is
written here), else half-block characters in truecolour, which any modern terminal shows.
``DREAMSEARCH_PREVIEW`` (kitty, iterm2, sixel or blocks) overrides the choice, e.g. for a
terminal that answers wrongly. Nothing is drawn unless stdout is a terminal: the escape
sequences would corrupt a pipe or a file.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from PIL import Image
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.segment import ControlType, Segment
from rich.text import Text

from dreamsearch.display import short_path
from dreamsearch.errors import DreamsearchError, ImageError
from dreamsearch.images import decode

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.search import Match

# textual-image logs a warning with a traceback when the terminal does not answer its size
# query (tmux, a serial console): Python would print it under the pictures. It then assumes
# 10x20-pixel cells, which only changes how tall a thumbnail is.
logging.getLogger("textual_image").addHandler(logging.NullHandler())

PROTOCOLS = ("kitty", "iterm2", "sixel", "blocks")
#: A thumbnail's width in terminal cells (a result list stays scannable at 16 rows a picture).
CELLS = 24
#: Pixels decoded per thumbnail side: enough for sixel and kitty at common cell sizes.
PIXELS = 256


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def terminal_protocol(environ: Mapping[str, str] = os.environ) -> str:
    """How this terminal can show pictures: one of ``PROTOCOLS``."""
    wanted = environ.get("DREAMSEARCH_PREVIEW", "")
    if wanted:
        if wanted not in PROTOCOLS:
            raise DreamsearchError(f"DREAMSEARCH_PREVIEW={wanted!r} is not one of {', '.join(PROTOCOLS)}")
        return wanted
    if environ.get("TERM_PROGRAM") == "iTerm.app" or environ.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    # textual-image asks the terminal on import (sixel first: kitty has none, and terminals
    # that report kitty's protocol without its placeholders do draw sixel)
    from textual_image.renderable import Image as Detected
    from textual_image.renderable import SixelImage, TGPImage

    return {SixelImage: "sixel", TGPImage: "kitty"}.get(Detected, "blocks")


def draw_previews(
    blocks: Sequence[tuple[str, Sequence[Match]]], console: Console | None = None, protocol: str | None = None
) -> None:
    """Each block's label, then each result's thumbnail over its rank, distance and path.
    A file that cannot be decoded now is named with the reason instead."""
    protocol = protocol or terminal_protocol()
    console = console or Console(
        color_system="truecolor", force_terminal=True, highlight=False
    )  # checked by the caller
    for label, matches in blocks:
        console.print(Text(label, style="bold"))
        for match in matches:
            caption = Text(f"#{match.rank}  {match.distance:.4f}  {short_path(match.path)}")
            try:
                picture = decode(match.path, draft_size=PIXELS).image
            except ImageError as exc:
                console.print(caption.append(f"  (not drawn: {exc.reason})"), soft_wrap=True)
                continue
            picture.thumbnail((PIXELS, PIXELS), Image.Resampling.BICUBIC)
            console.print(renderable(picture, protocol))
            console.print(caption, soft_wrap=True)


def renderable(picture: Image.Image, protocol: str) -> RenderableType:
    """``picture`` as a rich renderable ``CELLS`` wide, drawn with ``protocol``."""
    if protocol == "iterm2":
        return ITerm2Image(picture, CELLS)
    from textual_image.renderable import HalfcellImage, SixelImage, TGPImage

    kind = {"kitty": TGPImage, "sixel": SixelImage, "blocks": HalfcellImage}[protocol]
    return kind(picture, width=CELLS)


class ITerm2Image:
    """iTerm2's inline image: the picture as PNG in one ``OSC 1337 ; File=`` sequence,
    ``cells`` wide (iTerm2 scales it and keeps its aspect ratio)."""

    def __init__(self, picture: Image.Image, cells: int) -> None:
        self.picture, self.cells = picture, cells

    def sequence(self) -> str:
        png = io.BytesIO()
        self.picture.save(png, "PNG")
        data = png.getvalue()
        payload = base64.b64encode(data).decode("ascii")
        return f"\x1b]1337;File=inline=1;size={len(data)};width={self.cells};preserveAspectRatio=1:{payload}\x07"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # a control segment: written as is, taking no cells in rich's layout (iTerm2 moves the cursor)
        yield Segment(self.sequence(), control=[(ControlType.CURSOR_FORWARD, 0)])
        yield Segment.line()
