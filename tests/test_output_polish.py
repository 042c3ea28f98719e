"""What people see: tables on an 80-column terminal, copies in every format, contact sheets
that wrap, compare pages side by side, and `eval copies` embedding each image once."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from dreamsearch.compare import Overlap
from dreamsearch.contact_sheet import Row, Tile, write_png
from dreamsearch.display import short_path
from dreamsearch.evaluation.copies import TRANSFORMS
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import load_model
from dreamsearch.models.embedder import Embedder
from dreamsearch.output import render_comparison
from dreamsearch.search import Match
from tests.helpers.cli import invoke, invoke_in
from tests.helpers.images import photo_folder, photo_like
from tests.helpers.official_layout import write_tiny_cache
from tests.helpers.pages import Links

DEEP = ("photos-of-2024", "holiday-in-the-mountains", "wallpapers")
NAME = "146_contents_1234567890_{:02d}.jpg"
MODELS = ("dreamsim-dino", "dreamsim-synclr")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Eight photos with long names three folders down; the first has 11 copies, the
    second one; indexed with two tiny models."""
    base = tmp_path_factory.mktemp("polish")
    weights = write_tiny_cache(base / "weights")
    write_tiny_cache(weights, "synclr_vitb16", seed=1)
    photos = photo_folder(base.joinpath(*DEEP), 8, (160, 120), 600, NAME, quality=90)
    for index in range(11):
        (photos / "backup" / f"copy{index:02d}").mkdir(parents=True)
        shutil.copy(photos / NAME.format(0), photos / "backup" / f"copy{index:02d}")
    shutil.copy(photos / NAME.format(1), photos / "backup")
    lib = LibraryLayout.prepare(base / "lib")
    index_folders(
        lib,
        [base / DEEP[0]],
        [load_model(m, weights_dir=weights, device="cpu") for m in MODELS],
        IndexOptions(workers=0),
    )
    return base, photos, lib, weights


def cli(library, *args):
    _base, _photos, lib, weights = library
    return invoke_in(lib.root, weights, *args, env={"COLUMNS": "80"})


def query(library, *args):
    photos = library[1]
    return cli(library, "query", "--like", str(photos / NAME.format(0)), "--include-self", "-m", MODELS[0], *args)


# 7. tables on an 80-column terminal


def test_short_path_is_relative_and_cuts_folders_never_the_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert short_path(tmp_path / "x.jpg") == "x.jpg"
    assert short_path(tmp_path / "home" / "pictures" / "a.jpg") == "~/pictures/a.jpg"  # shorter than home/pictures/…
    assert short_path("/srv/photos/2024/tokyo/night/ramen.jpg") == "/srv/photos/2024/tokyo/night/ramen.jpg"
    assert short_path("/srv/photos/2024/tokyo/night/ramen.jpg", 24) == "/srv/…/night/ramen.jpg"
    assert short_path("/srv/photos/a-very-long-file-name.jpg", 5) == "…/a-very-long-file-name.jpg"
    assert short_path("/srv/a\nb.jpg") == "$'/srv/a\\nb.jpg'"  # display_path's quoting is kept
    assert short_path("/srv/photos/2024/a\nb.jpg", 14) == "$'/…/a\\nb.jpg'"


def test_query_table_fits_80_columns_with_whole_names_and_counted_copies(library, monkeypatch):
    base = library[0]
    monkeypatch.chdir(base)
    table = query(library, "-k", "8")
    assert table.exit_code == 0, table.output
    assert max(map(len, table.stdout.splitlines())) <= 80
    rows = [line for line in table.stdout.splitlines() if line.startswith("│")]
    assert all(NAME.format(index) in table.stdout for index in range(8))  # every file name whole
    assert f"{DEEP[0]}/…/{NAME.format(2)}" in table.stdout  # relative, the middle folders cut
    assert not any(str(base) in row for row in rows)
    assert "+11 copies" in table.stdout and "copy05" not in table.stdout
    assert len(rows) == 8 + 1 + 1  # a line per result, the +11 line, the one copy of the second photo

    verbose = query(library, "-k", "8", "-v")
    assert verbose.exit_code == 0, verbose.output
    rows = [line for line in verbose.stdout.splitlines() if line.startswith("│")]
    assert "+11 copies" not in verbose.stdout and len(rows) == 8 + 11 + 1


def test_compare_table_wraps_a_long_file_name_instead_of_cutting_it(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    name = "146_contents_1234567890_wallpaper.jpg"
    matches = [Match(1, 0.1, f"/p/{name}", 1), Match(2, 0.2, "/p/b.jpg", 1)]
    render_comparison(
        "/p/q.jpg", 2, {"a": matches, "b": matches, "c": matches}, [Overlap(("a", "b"), 2, 1.0, 1.0)], as_json=False
    )
    out = capsys.readouterr().out
    first_model = "".join(line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│"))
    assert "…" not in out and name in first_model


# 8. copies in every format


def test_csv_gives_each_copy_a_row_of_its_own(library):
    outcome = query(library, "-k", "3", "--csv")
    assert outcome.exit_code == 0, outcome.output
    text = outcome.stdout_bytes.decode("utf-8", "surrogateescape")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert text.splitlines()[0] == "query,rank,distance,path,size,copy_of"
    assert len(text.splitlines()) == len(rows) + 1  # one line per row: simple tools read it
    assert [row["rank"] for row in rows if not row["copy_of"]] == ["1", "2", "3"]
    results = json.loads(query(library, "-k", "3", "--json").stdout)["queries"][0]["results"]
    for result in results:
        copies = [row for row in rows if row["copy_of"] == result["path"]]
        assert sorted(row["path"] for row in copies) == sorted(result["also_at"])
        assert {(row["rank"], row["size"]) for row in copies} <= {(str(result["rank"]), str(result["size"]))}
    assert len(results[0]["also_at"]) == 11


def test_query_page_lists_each_results_copies(library, tmp_path):
    page = tmp_path / "query.html"
    outcome = query(library, "-k", "2", "--json", "--html", str(page))
    assert outcome.exit_code == 0, outcome.output
    links = Links()
    links.feed(page.read_text(encoding="utf-8"))
    linked = {unquote(urlparse(href).path) for href in links.hrefs}
    copies = {path for r in json.loads(outcome.stdout)["queries"][0]["results"] for path in r["also_at"]}
    assert len(copies) >= 11 and copies <= linked


# 9. contact sheets wrap; compare shows the models side by side


def test_a_long_row_wraps_into_lines_that_fit_a_screen(tmp_path):
    picture = tmp_path / "a.jpg"
    photo_like(200, 150, 1).save(picture)
    sheet_path = tmp_path / "sheet.png"
    write_png([Row("q.jpg (dreamsim)", tuple(Tile(str(picture), f"#{index}") for index in range(26)))], sheet_path)
    with Image.open(sheet_path) as sheet:  # 26 tiles, at most 8 to a line: 4 lines
        assert 6 * 160 <= sheet.width <= 1600 and sheet.height >= 4 * 160


def test_compare_sheet_and_page_show_each_model_in_a_labelled_block(library, tmp_path):
    photos = library[1]
    grid, page = tmp_path / "compare.png", tmp_path / "compare.html"
    outcome = cli(
        library,
        "compare",
        str(photos / NAME.format(2)),
        "--models",
        ",".join(MODELS),
        "-k",
        "5",
        "--grid",
        str(grid),
        "--html",
        str(page),
    )
    assert outcome.exit_code == 0, outcome.output
    with Image.open(grid) as sheet:  # the query, then each model's 5 results
        assert sheet.width <= 1600 and sheet.height >= 3 * 160
    text = page.read_text(encoding="utf-8")
    columns = re.search(r'<div class="columns">(.*)</div>', text, re.DOTALL)
    assert columns and re.findall(r"<h2>(.*?)</h2>", columns.group(1)) == list(MODELS)
    assert re.search(r"<table>.*dreamsim-dino vs dreamsim-synclr.*</table>", text, re.DOTALL)


# 11. eval copies embeds each image once


def test_eval_copies_embeds_each_original_and_copy_once(tmp_path, tiny_weights, monkeypatch):
    folder = photo_folder(tmp_path / "originals", 3, (120, 90), 800, "o{}.jpg", quality=92)
    embedded = []
    real_embed = Embedder.embed
    monkeypatch.setattr(Embedder, "embed", lambda self, batch: embedded.append(len(batch)) or real_embed(self, batch))
    args = [
        "eval",
        "copies",
        str(folder),
        "-m",
        "dreamsim-dino",
        "--library",
        str(tmp_path / "lib"),
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    ]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    edited = 3 * len(TRANSFORMS)
    assert sum(embedded) == 3 + edited  # the originals once, then their copies
    assert f"3 originals + {edited} edited copies" in first.stderr  # what the progress total of {3 + edited} is
    embedded.clear()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert sum(embedded) == 0
