"""Hostile input: file names that are not UTF-8 or hold control characters, photos over
Pillow's own pixel limit, damaged weight zips. Outputs stay valid and lossless, errors
stay one line."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import unicodedata
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from dreamsearch.compare import Overlap
from dreamsearch.display import display_path
from dreamsearch.errors import ImageError
from dreamsearch.images import decode
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.output import render_comparison
from dreamsearch.search import Match
from tests.helpers.cli import invoke, run_module
from tests.helpers.images import photo_folder, photo_like

LATIN1 = b"caf\xe9.jpg"  # a Latin-1 name: not valid UTF-8
BYTE_FF = b"\xff odd.jpg"
RAMEN = "ラーメン.jpg"
NEWLINE = "line\nbreak.jpg"
MARKUP = "[red]:smile:.jpg"  # rich console markup and emoji code, shown literally


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model):
    """A library over photos with hostile names; ``caf\\xe9.jpg`` is a byte copy of p01."""
    base = tmp_path_factory.mktemp("hostile")
    photos = photo_folder(base / "photos", 4, (96, 64), 900, "p{:02d}.jpg", quality=90)
    raw = os.fsencode(photos)
    with open(raw + b"/" + LATIN1, "wb") as handle:
        handle.write((photos / "p01.jpg").read_bytes())
    for number, name in enumerate([os.fsdecode(BYTE_FF), RAMEN, NEWLINE, MARKUP]):
        photo_like(96, 64, 950 + number).save(photos / name, quality=90)
    library = LibraryLayout.prepare(base / "lib")
    report = index_folders(library, [photos], [tiny_model], IndexOptions(workers=0))
    assert report.failures == []
    return photos, library


def on_disk(photos: Path) -> set[bytes]:
    raw = os.fsencode(photos)
    return {raw + b"/" + name for name in os.listdir(raw)}


def cli(*args: str | bytes) -> subprocess.CompletedProcess:
    """``python -m dreamsearch ARGS`` under a UTF-8 locale, arguments passed as raw bytes."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "PYTHONUTF8")}
    env.update(LC_ALL="C.UTF-8", HF_HUB_OFFLINE="1")
    return run_module(*map(os.fsencode, args), env=env, text=False)


def query_like(library: LibraryLayout, *paths: str | bytes, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    likes = [part for path in paths for part in ("--like", path)]
    return cli("query", *likes, "-m", "dreamsim-dino", "--library", str(library.root), *args)


def assert_each_finds_itself(library: LibraryLayout, paths: list[bytes]) -> None:
    """Query with each path (raw bytes in argv): each is indexed, and the JSON answer is
    UTF-8 throughout, readable names as is, only undecodable bytes escaped."""
    outcome = query_like(library, *paths, args=("-k", "20", "--include-self", "--json"))
    assert outcome.returncode == 0, outcome.stderr
    outcome.stdout.decode("utf-8")  # strict
    assert RAMEN.encode() in outcome.stdout
    assert b"caf\\udce9.jpg" in outcome.stdout and b"\\udcff odd.jpg" in outcome.stdout
    blocks = json.loads(outcome.stdout)["queries"]
    assert [os.fsencode(block["query"]) for block in blocks] == paths
    assert all(block["results"][0]["distance"] < 1e-5 for block in blocks)


def paths_from_json(stdout: bytes) -> list[str]:
    results = json.loads(stdout)["queries"][0]["results"]
    return [p for r in results for p in (r["path"], *r["also_at"])]


def paths_from_jsonl(stdout: bytes) -> list[str]:
    records = [json.loads(line) for line in stdout.splitlines()]
    return [p for r in records for p in (r["path"], *r["also_at"])]


def paths_from_csv(stdout: bytes) -> list[str]:
    text = stdout.decode("utf-8", "surrogateescape")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return [row["path"] for row in rows]


@pytest.mark.parametrize(
    "fmt, parse", [("--json", paths_from_json), ("--jsonl", paths_from_jsonl), ("--csv", paths_from_csv)]
)
def test_query_output_gives_back_the_exact_file_name_bytes(hostile, fmt, parse):
    """Each path read back from the output (bytes via os.fsencode) is a file on disk, and
    querying with it finds that file's content."""
    photos, library = hostile
    outcome = query_like(library, str(photos / "p01.jpg"), args=("-k", "20", "--include-self", fmt))
    assert outcome.returncode == 0, outcome.stderr
    recovered = [os.fsencode(p) for p in parse(outcome.stdout)]
    everything = on_disk(photos)
    assert sorted(recovered) == sorted(everything)  # CSV too: a copy's other paths have rows of their own
    hostile_names = [p for p in recovered if p.endswith((b"/" + LATIN1, b"/" + BYTE_FF))]
    assert os.fsencode(photos) + b"/" + BYTE_FF in hostile_names
    assert_each_finds_itself(library, hostile_names)


def test_csv_keeps_a_newline_inside_one_quoted_field(hostile):
    photos, library = hostile
    outcome = invoke(
        "query",
        "--like",
        str(photos / NEWLINE),
        "-m",
        "dreamsim-dino",
        "--library",
        str(library.root),
        "-k",
        "20",
        "--include-self",
        "--csv",
    )
    assert outcome.exit_code == 0, outcome.output
    rows = list(csv.reader(io.StringIO(outcome.stdout_bytes.decode("utf-8", "surrogateescape"), newline="")))
    assert rows[0] == ["query", "rank", "distance", "path", "size", "copy_of"] and len(rows) == 1 + 9  # a row a file
    assert {row[0] for row in rows[1:]} == {str(photos / NEWLINE)}
    assert rows[1][3] == str(photos / NEWLINE) and rows[1][1] == "1"
    assert os.fsencode(photos) + b"/" + BYTE_FF in {os.fsencode(row[3]) for row in rows}


def test_duplicates_json_gives_back_the_exact_file_name_bytes(hostile):
    photos, library = hostile
    outcome = cli("duplicates", "-m", "dreamsim-dino", "--library", str(library.root), "--max-distance", "0", "--json")
    assert outcome.returncode == 0, outcome.stderr
    groups = json.loads(outcome.stdout)["groups"]
    identical = [g for g in groups if g["kind"] == "identical"]
    assert len(identical) == 1
    names = {os.fsencode(f["path"]) for f in (identical[0]["keeper"], *identical[0]["others"])}
    latin1 = os.fsencode(photos) + b"/" + LATIN1
    assert names == {os.fsencode(photos / "p01.jpg"), latin1}
    assert_each_finds_itself(library, [latin1])


def test_compare_json_gives_back_the_exact_file_name_bytes(capsysbinary):
    name = os.fsdecode(b"/photos/\xff\xfe.jpg")
    matches = [Match(1, 0.25, name, 10, (os.fsdecode(b"/photos/caf\xe9.jpg"),))]
    render_comparison(name, 1, {"a": matches, "b": matches}, [Overlap(("a", "b"), 1, 1.0, None)], as_json=True)
    document = json.loads(capsysbinary.readouterr().out)
    assert os.fsencode(document["query"]) == b"/photos/\xff\xfe.jpg"
    assert os.fsencode(document["models"]["a"][0]["also_at"][0]) == b"/photos/caf\xe9.jpg"


def test_tables_show_every_name_on_its_own_line_and_literally(hostile):
    photos, library = hostile
    common = ["-m", "dreamsim-dino", "--library", str(library.root)]
    table = invoke("query", "--like", str(photos / "p00.jpg"), "-k", "20", *common, env={"COLUMNS": "500"})
    assert table.exit_code == 0, table.output
    for name in (LATIN1, BYTE_FF, NEWLINE.encode()):
        shown = display_path(os.fsdecode(os.fsencode(photos) + b"/" + name))
        assert shown.startswith("$'") and shown in table.stdout
    assert str(photos / MARKUP) in table.stdout and str(photos / RAMEN) in table.stdout
    dupes = invoke("duplicates", "--max-distance", "0", *common, env={"COLUMNS": "500"})
    assert dupes.exit_code == 0, dupes.output
    assert display_path(os.fsdecode(os.fsencode(photos) + b"/" + LATIN1)) in dupes.stdout


TRICKY = [
    "a\nb.jpg",
    "a\\nb.jpg",
    "$'a\\nb.jpg'",
    "a'b.jpg",
    "a\tb",
    "a\rb",
    "\x1b[31mred.jpg",
    "a\x7f",
    "a\u0085b",
    "a\u2028b",
    "a\u202eb.jpg",
    os.fsdecode(b"caf\xe9.jpg"),
    "caf\u00e9.jpg",
    os.fsdecode(b"\xc2\x85"),
    "\\xe9",
    "plain name.jpg",
    "ラーメン.jpg",
    "a\u3000b",
    "",
    "$'",
    "'",
]


def test_display_path_is_one_line_and_never_ambiguous():
    shown = [display_path(name) for name in TRICKY]
    for text in shown:
        assert len(text.splitlines()) <= 1
        assert not {unicodedata.category(ch) for ch in text} & {"Cc", "Cf", "Cs", "Zl", "Zp"}
    assert len(set(shown)) == len(TRICKY)
    assert display_path("a\nb.jpg") == "$'a\\nb.jpg'"
    assert display_path(os.fsdecode(b"caf\xe9.jpg")) == "$'caf\\xe9.jpg'"
    for plain in ("plain name.jpg", "ラーメン.jpg", "a'b.jpg", "[red]x", ""):
        assert display_path(plain) == plain
    assert display_path(Path("/a/b\n")) == "$'/a/b\\n'"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_display_path_quotes_are_shell_quotes_of_the_exact_bytes():
    for name in TRICKY:
        shown = display_path(name)
        if shown.startswith("$'"):
            out = subprocess.run(
                ["bash", "-c", f"printf %s {shown}"],
                capture_output=True,
                env={"LC_ALL": "C.UTF-8", "PATH": os.environ["PATH"]},
            ).stdout
            assert out == os.fsencode(name), name


def test_max_pixels_above_pillows_own_limit_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    large = tmp_path / "101mp.png"
    Image.new("1", (12000, 8500), 1).save(large)
    picture = decode(large, max_pixels=300_000_000)
    assert (picture.width, picture.height) == (12000, 8500)
    assert picture.image.mode == "RGB" and picture.image.getpixel((11999, 8499)) == (255, 255, 255)
    with pytest.raises(ImageError, match="over the limit"):
        decode(large, max_pixels=100_000_000)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (16000, 14000)).save(bomb)
    with pytest.raises(ImageError, match="decompression bomb"):
        decode(bomb)


def test_a_bomb_gets_the_same_words_whichever_check_sees_it_first(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 15_000)).save(bomb)  # 300 MP
    with pytest.raises(ImageError) as ours:
        decode(bomb, max_pixels=200_000_000)  # Pillow's warning is not an error here: our check
    with warnings.catch_warnings():  # as in a CLI or server process, where it is
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        with pytest.raises(ImageError) as pillows:
            decode(bomb, max_pixels=200_000_000)
    assert str(ours.value) == str(pillows.value)
    assert str(ours.value).endswith("300,000,000 pixels is over the limit of 200,000,000 (a decompression bomb?)")


def _dino_zip(tiny_weights: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            zf.write(tiny_weights / "dino_vitb16_single_lora" / name, f"dino_vitb16_single_lora/{name}")
    return buffer.getvalue()


def _damaged_payload(archive: bytes) -> bytes:
    """The archive with bytes of its first member's compressed data flipped (directory intact)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.compress_size // 2
    return archive[:start] + bytes(b ^ 0xA5 for b in archive[start:middle]) + archive[middle:]


@pytest.mark.parametrize(
    "damage, message",
    [("garbage", "not a complete zip file"), ("truncated", "not a complete zip file"), ("payload", "damaged zip")],
)
def test_damaged_weight_zip_is_one_line_and_leaves_nothing(tmp_path, tiny_weights, damage, message):
    archive = _dino_zip(tiny_weights)
    data = {
        "garbage": b"not a zip at all\n" * 300,
        "truncated": archive[: len(archive) // 2],
        "payload": _damaged_payload(archive),
    }[damage]
    source = tmp_path / "x.zip"
    source.write_bytes(data)
    weights = tmp_path / "weights"
    outcome = cli("models", "import", "dreamsim-dino", str(source), "--weights-dir", str(weights))
    stderr = outcome.stderr.decode()
    assert outcome.returncode == 1 and "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"error: {source}: {message}")
    assert not weights.exists() or list(weights.rglob("*")) == []
