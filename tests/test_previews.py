"""``--preview``: result thumbnails in the terminal, with the escape sequences of the
protocol the terminal has (kitty graphics, iTerm2 inline images, sixel), else truecolour
half blocks; never when stdout is not a terminal."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image
from rich.console import Console

from dreamsearch import previews
from dreamsearch.errors import DreamsearchError
from dreamsearch.previews import CELLS, draw_previews, terminal_protocol
from dreamsearch.search import Match
from tests.helpers.cli import invoke_in
from tests.helpers.images import make_photos
from tests.helpers.official_layout import write_tiny_cache

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture()
def picture(tmp_path):
    """A result file: red over blue, so the colours written can be checked."""
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (0, 16, 64, 32))
    path = tmp_path / "red over blue.png"
    image.save(path)
    return path


def _draw(path, protocol: str) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=100)
    draw_previews(
        [("query", [Match(1, 0.125, str(path), 10), Match(2, 0.5, str(path.parent / "gone.jpg"), 10)])],
        console,
        protocol,
    )
    return out.getvalue()


def _png(payload: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_kitty_graphics_protocol(picture, capfd):
    """The PNG goes to the terminal in ``ESC _ G`` chunks (f=100), is placed virtually
    (a=p, U=1), and the text drawn is kitty's Unicode placeholders."""
    text = _draw(picture, "kitty")
    written = capfd.readouterr().out  # textual-image writes the picture to the terminal itself
    chunks = re.findall(r"\x1b_G([^;\x1b]*)(?:;([^\x1b]*))?\x1b\\", written)
    sent = [(keys, payload) for keys, payload in chunks if "f=100" in keys]
    assert sent and "a=p" in written and "U=1" in written
    png = _png("".join(payload for _keys, payload in sent))
    assert png.getpixel((0, 0))[:3] == RED and png.getpixel((0, png.height - 1))[:3] == BLUE
    assert "\U0010eeee" in text and "#1  0.1250" in text and "gone.jpg  (not drawn: no such file)" in text


def test_iterm2_inline_image(picture):
    text = _draw(picture, "iterm2")
    found = re.search(
        r"\x1b\]1337;File=inline=1;size=(\d+);width=(\d+);preserveAspectRatio=1:([A-Za-z0-9+/=]+)\x07", text
    )
    assert found and int(found[2]) == CELLS
    png = _png(found[3])
    assert int(found[1]) == len(base64.b64decode(found[3])) and png.format == "PNG"
    assert png.getpixel((0, 0))[:3] == RED and png.getpixel((0, png.height - 1))[:3] == BLUE


def test_sixel(picture):
    text = _draw(picture, "sixel")
    found = re.search(r"\x1bP[0-9;]*q(.*?)\x1b\\", text, re.S)
    assert found
    registers = set(re.findall(r"#\d+;2;(\d+);(\d+);(\d+)", found[1]))  # colours in percent
    assert ("100", "0", "0") in registers and ("0", "0", "100") in registers


def test_half_blocks_in_truecolour_are_the_fallback(picture):
    text = _draw(picture, "blocks")
    assert "▀" in text and "\x1b[38;2;255;0;0" in text and "48;2;0;0;255m" in text
    assert "\x1b_G" not in text and "\x1bP" not in text and "1337" not in text


def test_the_protocol_follows_the_terminal():
    assert terminal_protocol({"TERM_PROGRAM": "iTerm.app"}) == "iterm2"
    assert terminal_protocol({"LC_TERMINAL": "iTerm2"}) == "iterm2"  # set through ssh too
    assert terminal_protocol({"DREAMSEARCH_PREVIEW": "sixel", "TERM_PROGRAM": "iTerm.app"}) == "sixel"
    # no answer from the terminal (here: not one at all) leaves the half blocks
    assert terminal_protocol({"TERM": "xterm-256color"}) == "blocks"
    with pytest.raises(DreamsearchError, match="DREAMSEARCH_PREVIEW='png' is not one of kitty, iterm2, sixel, blocks"):
        terminal_protocol({"DREAMSEARCH_PREVIEW": "png"})


def test_cli_previews_only_on_a_terminal(tmp_path, tiny_weights, monkeypatch):
    photos = make_photos(tmp_path / "photos", count=3)
    lib = tmp_path / "lib"
    assert invoke_in(lib, tiny_weights, "index", str(photos), "-m", "dreamsim-dino").exit_code == 0
    args = ("query", str(photos / "p0.jpg"), "-m", "dreamsim-dino", "-k", "2", "--preview")
    piped = invoke_in(lib, tiny_weights, *args)
    assert piped.exit_code == 0 and "\x1b" not in piped.stdout and "▀" not in piped.stdout
    assert "--preview draws only on a terminal" in piped.stderr
    monkeypatch.setattr(previews, "stdout_is_terminal", lambda: True)
    shown = invoke_in(lib, tiny_weights, *args, env={"DREAMSEARCH_PREVIEW": "blocks"})
    assert shown.exit_code == 0 and shown.stdout.count("▀") >= 2 * CELLS and "\x1b[38;2;" in shown.stdout


def test_cli_compare_previews(tmp_path, monkeypatch):
    weights = write_tiny_cache(tmp_path / "weights", "dino_vitb16")
    write_tiny_cache(weights, "clip_vitb32", seed=1)
    photos = make_photos(tmp_path / "photos", count=3)
    lib = tmp_path / "lib"
    for model in ("dreamsim-dino", "dreamsim-clip"):
        assert invoke_in(lib, weights, "index", str(photos), "-m", model).exit_code == 0
    monkeypatch.setattr(previews, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("DREAMSEARCH_PREVIEW", "iterm2")
    shown = invoke_in(
        lib,
        weights,
        "compare",
        str(photos / "p0.jpg"),
        "-k",
        "2",
        "--preview",
        "--models",
        "dreamsim-dino,dreamsim-clip",
    )
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.count("\x1b]1337;File=inline=1") == 4  # two results for each of two models
