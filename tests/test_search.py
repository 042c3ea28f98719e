"""Queries: exact distances, self and copies, --like, filters, stable JSON, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from tests.helpers.cli import invoke, invoke_in
from tests.helpers.images import photo_folder
from tests.helpers.pages import Links


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("search")
    photos = photo_folder(base / "photos", 12, (200, 150), 500, "p{:02d}.jpg", quality=90)
    (photos / "trip").mkdir()
    shutil.copy(photos / "p03.jpg", photos / "trip" / "p03-copy.jpg")
    library = LibraryLayout.prepare(base / "lib")
    index_folders(library, [photos], [tiny_model], IndexOptions(workers=0))
    return photos, library


def query(library, tiny_weights, *args):
    return invoke_in(library.root, tiny_weights, "query", *args, "-m", "dreamsim-dino")


def results(outcome) -> list[dict]:
    assert outcome.exit_code == 0, outcome.output
    return json.loads(outcome.stdout)["queries"][0]["results"]


def test_an_indexed_image_finds_itself_and_its_copies_first(indexed, tiny_weights):
    photos, library = indexed
    found = results(query(library, tiny_weights, str(photos / "p03.jpg"), "-k", "3", "--include-self", "--json"))
    assert found[0]["distance"] < 1e-5
    assert {found[0]["path"], *found[0]["also_at"]} == {str(photos / "p03.jpg"), str(photos / "trip" / "p03-copy.jpg")}
    assert [r["rank"] for r in found] == [1, 2, 3]
    assert set(found[0]) == {
        "rank",
        "distance",
        "path",
        "size",
        "also_at",
        "id",
        "width",
        "height",
        "links",
    }  # stable schema
    assert found[0]["size"] == (photos / "p03.jpg").stat().st_size
    assert found[1]["distance"] >= found[0]["distance"] and found[2]["distance"] >= found[1]["distance"]

    without_self = results(query(library, tiny_weights, str(photos / "p03.jpg"), "-k", "3", "--json"))
    assert all("p03" not in r["path"] for r in without_self)
    assert [r["path"] for r in without_self[:2]] == [r["path"] for r in found[1:]]
    assert [r["rank"] for r in without_self] == [1, 2, 3]


def test_like_equals_querying_with_the_file(indexed, tiny_weights):
    photos, library = indexed
    by_file = results(query(library, tiny_weights, str(photos / "p05.jpg"), "-k", "5", "--json"))
    by_like = results(query(library, tiny_weights, "--like", str(photos / "p05.jpg"), "-k", "5", "--json"))
    assert [r["path"] for r in by_like] == [r["path"] for r in by_file]
    for a, b in zip(by_like, by_file, strict=True):
        assert abs(a["distance"] - b["distance"]) < 1e-5


def test_filters_and_machine_formats(indexed, tiny_weights):
    photos, library = indexed
    under = results(query(library, tiny_weights, str(photos / "p01.jpg"), "--under", str(photos / "trip"), "--json"))
    assert [r["path"] for r in under] == [str(photos / "trip" / "p03-copy.jpg")]
    everything = results(query(library, tiny_weights, str(photos / "p01.jpg"), "-k", "20", "--json"))
    assert len(everything) == 11  # 12 contents, minus the query itself
    cut = everything[4]["distance"]
    near = results(
        query(library, tiny_weights, str(photos / "p01.jpg"), "-k", "20", "--max-distance", str(cut), "--json")
    )
    assert all(r["distance"] <= cut for r in near) and len(near) >= 5
    lines = query(library, tiny_weights, str(photos / "p01.jpg"), "-k", "2", "--jsonl").stdout.strip().splitlines()
    assert [json.loads(line)["rank"] for line in lines] == [1, 2]
    csv_out = query(library, tiny_weights, str(photos / "p01.jpg"), "-k", "2", "--csv").stdout.splitlines()
    assert csv_out[0] == "query,rank,distance,path,size,copy_of" and len(csv_out) == 3
    nul = query(library, tiny_weights, str(photos / "p01.jpg"), "-k", "2", "-0").stdout_bytes
    assert nul.count(b"\0") == 2


def test_grid_and_html_show_the_query_and_every_result(indexed, tiny_weights, tmp_path):
    photos, library = indexed
    grid, page = tmp_path / "sheet.png", tmp_path / "sheet.html"
    outcome = query(
        library,
        tiny_weights,
        str(photos / "p02.jpg"),
        str(photos / "p07.jpg"),
        "-k",
        "4",
        "--json",
        "--grid",
        str(grid),
        "--html",
        str(page),
    )
    assert outcome.exit_code == 0, outcome.output
    blocks = json.loads(outcome.stdout)["queries"]  # stdout stays pure JSON
    with Image.open(grid) as sheet:
        sheet.load()
        # two rows (one per query) of 1 query + 4 results, thumbnails 160 px
        assert sheet.format == "PNG" and sheet.width >= 5 * 160 and sheet.height >= 2 * 160
        assert len(np.unique(np.asarray(sheet).reshape(-1, 3), axis=0)) > 100  # real thumbnails, not blank cells

    links = Links()
    links.feed(page.read_text(encoding="utf-8"))
    linked = {unquote(urlparse(href).path) for href in links.hrefs}
    wanted = {r["path"] for block in blocks for r in block["results"]}
    assert len(wanted) >= 4 and wanted <= linked
    assert {str(photos / "p02.jpg"), str(photos / "p07.jpg")} <= linked
    copies = sum(len(r["also_at"]) for block in blocks for r in block["results"])  # linked under their result
    assert len(links.images) == len(links.hrefs) - copies == 2 * 5
    assert all(src.startswith("data:image/jpeg;base64,") for src in links.images)  # self-contained


def test_grid_with_an_unknown_picture_type_is_refused(indexed, tiny_weights, tmp_path):
    photos, library = indexed
    outcome = query(library, tiny_weights, str(photos / "p02.jpg"), "--grid", str(tmp_path / "sheet.xyz"))
    assert outcome.exit_code == 1
    assert "sheet.xyz: unknown picture type '.xyz'" in outcome.stderr
    assert not list(tmp_path.iterdir())


def test_helpful_errors(indexed, tiny_weights, tmp_path):
    photos, library = indexed
    for args, message in [
        ((str(photos / "p01.jpg"), "-k", "0"), "-k must be at least 1"),
        ((str(tmp_path / "missing.jpg"),), "missing.jpg: no such file"),
        ((), "give at least one query image"),
    ]:
        outcome = query(library, tiny_weights, *args)
        assert outcome.exit_code == 1 and message in outcome.stderr, outcome.output
    other = invoke("query", str(photos / "p01.jpg"), "-m", "clip", "--library", str(library.root))
    assert other.exit_code == 1 and "run `dreamsearch index --model clip FOLDER` first" in other.stderr
    empty = invoke("query", str(photos / "p01.jpg"), "--library", str(tmp_path / "new"))
    assert empty.exit_code == 1 and "dreamsearch index" in empty.stderr


@pytest.mark.slow
def test_queries_while_an_index_run_commits(tmp_path, tiny_weights, tiny_model):
    """A query during indexing succeeds and only returns files that exist."""
    import os
    import subprocess
    import sys
    import time

    from tests.helpers.backends import AS_USERS_RUN
    from tests.helpers.indexing import INDEX_SCRIPT, vectors_in

    photos = photo_folder(tmp_path / "photos", 40, (320, 240), 900, "{:02d}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index_folders(library, [photos], [tiny_model], IndexOptions(workers=0))  # a first version
    for i in range(10):
        (photos / f"{i:02d}.jpg").unlink()
    photo_folder(photos, 40, (320, 240), 900, "{:02d}.jpg", start=40)
    writer = subprocess.Popen(
        [sys.executable, "-c", INDEX_SCRIPT, str(tiny_weights), str(library.root), str(photos)],
        env={**os.environ, **AS_USERS_RUN},  # from the saved graph: no torch to import
    )
    seen_counts = set()
    try:
        while writer.poll() is None:
            seen_counts.add(vectors_in(library))
            found = results(query(library, tiny_weights, str(photos / "20.jpg"), "-k", "80", "--json"))
            missing = [r["path"] for r in found if not Path(r["path"]).exists()]
            assert missing == [] or all(int(Path(p).stem) < 10 for p in missing)  # only files being removed
            time.sleep(0.05)
    finally:
        writer.wait(120)
    assert writer.returncode == 0 and len(seen_counts) > 1  # queries did overlap the commits
    final = results(query(library, tiny_weights, str(photos / "20.jpg"), "-k", "80", "--json"))
    assert sorted(Path(r["path"]).name for r in final) == sorted(f"{i:02d}.jpg" for i in range(10, 80) if i != 20)
