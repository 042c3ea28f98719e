"""Text queries (issue 25): words through CLIP's text tower, searched in the library's
``clip`` vectors, from the API, the CLI and HTTP; on a tiny OpenAI CLIP (both towers,
OpenAI's names) so the whole real code path runs in milliseconds."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dreamsearch.api import Library, Query
from dreamsearch.errors import DreamsearchError, NotFoundError
from dreamsearch.indexer import IndexOptions
from dreamsearch.server.app import create_app
from dreamsearch.server.security import Settings
from tests.helpers.cli import invoke_in, probe
from tests.helpers.images import make_photos
from tests.helpers.official_layout import write_tiny_cache, write_tiny_openai_clip

LONG = "a bowl of ramen " * 30  # ~120 tokens: over CLIP's 77


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Weights (tiny clip and dreamsim-dino), six photos, and a library indexed with both."""
    root = tmp_path_factory.mktemp("text")
    weights = write_tiny_openai_clip(root / "weights")
    write_tiny_cache(weights, "dino_vitb16")
    photos = make_photos(root / "photos")
    with Library.open(root / "lib", weights_dir=weights, device="cpu") as library:
        library.index([photos], models=["clip", "dreamsim-dino"], options=IndexOptions(workers=0))
    return root / "lib", weights, photos


def _library(setup) -> Library:
    lib, weights, _photos = setup
    return Library.open(lib, weights_dir=weights, device="cpu")


def test_a_text_query_searches_the_clip_vectors(setup):
    """Every result's distance is 1 - cosine between the text's vector and the file's
    stored clip vector, nearest first; the query is labelled with its text."""
    _lib, _weights, photos = setup
    with _library(setup) as library:
        query = library.query(text="ramen in a paper bowl")
        matches = library.search(query, k=10).matches
        stored = {str(p): library.query(like=p, model="clip").vector for p in sorted(photos.iterdir())}
    assert query.model == "clip" and query.sources == query.texts == ('"ramen in a paper bowl"',)
    assert query.pictures == () and query.notes == () and query.own == ()
    expected = sorted((1 - float(np.dot(v, query.vector)), path) for path, v in stored.items())
    assert [m.path for m in matches] == [path for _d, path in expected]
    assert np.allclose([m.distance for m in matches], [d for d, _p in expected], atol=1e-5)
    assert abs(np.linalg.norm(query.vector) - 1) < 1e-5


def test_longer_text_is_cut_and_says_so(setup):
    with _library(setup) as library:
        query = library.query(text=LONG)
    assert len(query.notes) == 1 and "cut to the 77 tokens CLIP reads" in query.notes[0]


def test_text_query_errors_are_one_line(setup, tmp_path):
    lib, weights, photos = setup
    with _library(setup) as library:
        with pytest.raises(DreamsearchError, match=r"model 'dreamsim-dino' has no text tower; text search uses 'clip'"):
            library.query(text="ramen", model="dreamsim-dino")
        with pytest.raises(DreamsearchError, match="the text is empty"):
            library.query(text=" \n\t")
        with pytest.raises(DreamsearchError, match="the text is empty once cleaned as CLIP cleans it"):
            library.query(text="\ufeff")  # not a space to Python, removed by CLIP's cleaning (ftfy)
    with Library.open(tmp_path / "lib", weights_dir=weights, device="cpu") as other:
        other.index([photos], models=["dreamsim-dino"], options=IndexOptions(workers=0))
        with pytest.raises(
            NotFoundError, match=r"needs the library's 'clip' vectors .* `dreamsearch index FOLDER -m clip`"
        ):
            other.query(text="ramen")


def test_the_text_tower_is_built_only_by_a_text_query(setup, tmp_path, monkeypatch):
    """Indexing with clip and image queries never build the text tower; a text query does
    (the stand-in below proves the hook is the one a text query calls)."""
    from dreamsearch.models import clip_text

    _lib, weights, photos = setup

    def refuse(*args, **kwargs):
        raise AssertionError("the text tower was built")

    monkeypatch.setattr(clip_text, "build_text_encoder", refuse)
    with Library.open(tmp_path / "lib", weights_dir=weights, device="cpu") as library:
        library.index([photos], models=["clip"], options=IndexOptions(workers=0))
        assert library.search(library.query(photos / "p0.jpg", model="clip"), k=1, include_self=True).matches[
            0
        ].path == str(photos / "p0.jpg")
        with pytest.raises(AssertionError, match="text tower was built"):
            library.query(text="ramen")


def _json(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_text_query_in_every_output(setup, tmp_path):
    lib, weights, _photos = setup
    with _library(setup) as library:
        expected = [m.path for m in library.search(library.query(text="ramen"), k=3).matches]
    document = _json(invoke_in(lib, weights, "query", "--text", "ramen", "-k", "3", "--json"))
    assert document["model"] == "clip"  # the default model of a text query
    assert document["queries"][0]["query"] == '"ramen"'
    assert [r["path"] for r in document["queries"][0]["results"]] == expected
    rows = list(csv.reader(io.StringIO(invoke_in(lib, weights, "query", "--text", "ramen", "-k", "3", "--csv").stdout)))
    assert rows[0][:4] == ["query", "rank", "distance", "path"] and [r[3] for r in rows[1:]] == expected
    assert {r[0] for r in rows[1:]} == {'"ramen"'}
    table = invoke_in(
        lib,
        weights,
        "query",
        "--text",
        "ramen",
        "-k",
        "3",
        "--grid",
        str(tmp_path / "s.png"),
        "--html",
        str(tmp_path / "s.html"),
    )
    assert table.exit_code == 0, table.stderr
    assert '"ramen"' in table.stdout and Path(expected[0]).name in table.stdout
    assert (tmp_path / "s.png").stat().st_size > 0
    assert html.escape('"ramen" (clip)') in (tmp_path / "s.html").read_text()  # the row's title: no query picture


def test_cli_combines_texts_and_images_with_mean(setup):
    lib, weights, photos = setup
    args = ("query", str(photos / "p1.jpg"), "--text", "ramen", "--text", "a beach", "-m", "clip", "-k", "6")
    separate = _json(invoke_in(lib, weights, *args, "--json"))["queries"]
    assert [q["query"] for q in separate] == [str(photos / "p1.jpg"), '"ramen"', '"a beach"']
    combined = _json(invoke_in(lib, weights, *args, "--combine", "mean", "--json"))["queries"]
    with _library(setup) as library:
        mean = Query.mean(
            [
                library.query(photos / "p1.jpg", model="clip"),
                library.query(text="ramen"),
                library.query(text="a beach"),
            ]
        )
        expected = library.search(mean, k=6).matches
    assert len(combined) == 1 and combined[0]["query"] == f'{photos / "p1.jpg"} + "ramen" + "a beach"'
    assert [r["path"] for r in combined[0]["results"]] == [m.path for m in expected]
    assert str(photos / "p1.jpg") not in [r["path"] for r in combined[0]["results"]]  # its own content left out


def test_cli_text_errors_and_notes(setup, tmp_path):
    lib, weights, photos = setup
    for model in ("dreamsim-dino", "resnet50"):
        wrong = invoke_in(lib, weights, "query", "--text", "ramen", "-m", model)
        assert wrong.exit_code == 1 and wrong.stderr.count("\n") == 1
        assert f"model '{model}' has no text tower; text search uses 'clip'" in wrong.stderr
    empty = invoke_in(lib, weights, "query", "--text", "  ")
    assert empty.exit_code == 1 and empty.stderr == "error: --text is empty: give words to search for\n"
    cut = invoke_in(lib, weights, "query", "--text", LONG, "--json")
    assert cut.exit_code == 0 and "cut to the 77 tokens CLIP reads" in cut.stderr
    json.loads(cut.stdout)  # the note went to stderr: stdout is still one JSON document
    invoke_in(tmp_path / "dino", weights, "index", str(photos), "-m", "dreamsim-dino")
    none = invoke_in(tmp_path / "dino", weights, "query", "--text", "ramen")
    assert none.exit_code == 1 and none.stderr.count("\n") == 1
    assert "index your folders with `dreamsearch index FOLDER -m clip`" in none.stderr


def test_a_model_without_a_text_tower_is_told_without_torch(tmp_path):
    probed = probe("query", "--text", "ramen", "-m", "dreamsim", "--library", str(tmp_path / "none"))
    assert probed.code == 1 and "has no text tower" in probed.stderr and "torch" not in probed.imported


def test_http_text_search(setup):
    lib, weights, _photos = setup
    with _library(setup) as library:
        expected = [m.path for m in library.search(library.query(text="ramen"), k=6).matches]
    app = create_app(
        Library.open(lib, weights_dir=weights, device="cpu"), ["dreamsim-dino", "clip"], Settings(max_body=2_000_000)
    )
    with TestClient(app, base_url="http://127.0.0.1") as client:
        first = client.post("/api/search/text", json={"text": "ramen", "k": 4})
        assert first.status_code == 200, first.text
        assert first.json()["model"] == "clip" and first.json()["notice"] is None
        assert [r["path"] for r in first.json()["results"]] == expected[:4] and first.json()["next_offset"] == 4
        second = client.post("/api/search/text", json={"text": "ramen", "k": 4, "offset": 4, "model": "clip"}).json()
        assert [r["path"] for r in second["results"]] == expected[4:] and second["next_offset"] is None
        assert "cut to the 77 tokens" in client.post("/api/search/text", json={"text": LONG}).json()["notice"]
        for empty in ("", "   "):
            assert client.post("/api/search/text", json={"text": empty}).status_code == 422
        dino = client.post("/api/search/text", json={"text": "ramen", "model": "dreamsim-dino"})
        assert dino.status_code == 400 and "no text tower" in dino.json()["detail"]
    only_dino = create_app(
        Library.open(lib, weights_dir=weights, device="cpu"), ["dreamsim-dino"], Settings(max_body=2_000_000)
    )
    with TestClient(only_dino, base_url="http://127.0.0.1") as client:
        missing = client.post("/api/search/text", json={"text": "ramen"})
        assert missing.status_code == 404 and "'clip' is not served here" in missing.json()["detail"]
