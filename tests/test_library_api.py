"""The Python API: the example in docs/api.md runs as written; reads from threads."""

from __future__ import annotations

import inspect
import re
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from dreamsearch import Library
from dreamsearch.errors import DreamsearchError
from dreamsearch.indexer import IndexOptions, check_engine
from tests.helpers.images import photo_like

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _photos(folder: Path) -> Path:
    folder.mkdir()
    for name, seed in (("beach.jpg", 1), ("dune.jpg", 2), ("forest.jpg", 3), ("city.jpg", 4)):
        photo_like(160, 120, seed).save(folder / name)
    return folder


def test_the_documented_example_runs(tmp_path, tiny_weights):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace = {
        "library_folder": tmp_path / "lib",
        "weights_folder": tiny_weights,
        "photo_folder": _photos(tmp_path / "photos"),
        "Image": Image,
    }
    exec(compile(code, str(DOC), "exec"), namespace)
    assert namespace["best"].path == str(tmp_path / "photos" / "beach.jpg") and namespace["best"].distance < 1e-5
    assert namespace["vectors"].shape == (1, 64)
    with Library.open(tmp_path / "lib") as library:
        remaining = library.search(library.query(like=tmp_path / "photos" / "dune.jpg", model="dreamsim-dino"), k=10)
    assert {Path(m.path).name for m in remaining.matches} == {"forest.jpg", "city.jpg"}


def test_queries_from_threads_and_arrays(tmp_path, tiny_weights):
    photos = _photos(tmp_path / "photos")
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=["dreamsim-dino"], options=IndexOptions(workers=0))
        expected = library.search(library.query(photos / "city.jpg", model="dreamsim-dino"), k=2)
        array = library.search(library.query(Image.open(photos / "city.jpg"), model="dreamsim-dino"), k=1)
        assert array.matches[0].path == str(photos / "city.jpg")  # a picture has no identity: it finds itself
        outcomes, errors = [], []

        def worker():
            try:
                outcomes.append(library.search(library.query(photos / "city.jpg", model="dreamsim-dino"), k=2))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and all(outcome == expected for outcome in outcomes)


def test_one_query_builder_takes_exactly_one_source(tmp_path, tiny_weights):
    """A picture, its indexed file (by path or by id) and its vector make queries that find
    the same neighbours; no source, or two, is refused in one line."""
    photos = _photos(tmp_path / "photos")
    city = photos / "city.jpg"
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=["dreamsim-dino"], options=IndexOptions(workers=0))
        by_path = library.query(like=city, model="dreamsim-dino")
        file_id = library.search(by_path, k=1, include_self=True).matches[0].id
        queries = [
            library.query(city, model="dreamsim-dino"),
            by_path,
            library.query(like=file_id, model="dreamsim-dino"),
            library.query(vector=library.embed(city, "dreamsim-dino") * 3, model="dreamsim-dino"),
        ]
        pages = [[m.path for m in library.search(q, k=3, include_self=True).matches] for q in queries]
        assert pages[0][0] == str(city) and all(page == pages[0] for page in pages)
        assert [q.sources for q in queries] == [(str(city),), (str(city),), (str(city),), ("vector",)]
        for sources in ({}, {"like": city, "text": "a city"}, {"image": city, "vector": [1.0, 0.0]}):
            with pytest.raises(DreamsearchError, match="a query takes one of image, like, vector or text"):
                library.query(**sources)


def test_a_search_racing_a_write_gets_a_fresh_searcher(tmp_path, tiny_weights, monkeypatch):
    """A reader that finds its searcher stale while a write drops every searcher (an index
    job finishing in the server) opens a new one instead of failing."""
    photos = _photos(tmp_path / "photos")
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=["dreamsim-dino"], options=IndexOptions(workers=0))
        stale = library._searcher("dreamsim-dino")

        def moved_on_while_a_write_finished():
            library._forget_searchers()
            return False

        monkeypatch.setattr(stale, "is_current", moved_on_while_a_write_finished)
        fresh = library._searcher("dreamsim-dino")
        assert fresh is not stale and fresh.search(stale.stored_vector(photos / "city.jpg")[0], 1)[0].path.endswith(
            "city.jpg"
        )


# The arguments each public method takes by position; everything after them is keyword-only,
# so `search(query, 5, True)` cannot silently mean something else when an option is added.
POSITIONAL = {
    "open": ["path"],
    "index": ["paths", "models", "options"],
    "embed": ["image", "model"],
    "embed_files": ["paths", "model"],
    "search": ["query"],
    "query": ["image"],
    "compare": ["image", "models"],
    "duplicates": ["model"],
    "status": [],
    "unload_models": [],
}


def test_public_methods_take_their_options_by_name_only():
    for name, positional in POSITIONAL.items():
        parameters = list(inspect.signature(getattr(Library, name)).parameters.values())
        parameters = [p for p in parameters if p.name not in ("self", "cls")]
        by_position = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert by_position == positional, name
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters[len(positional) :]), name


def test_an_option_passed_by_position_is_refused(tmp_path, tiny_weights):
    photos = _photos(tmp_path / "photos")
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=["dreamsim-dino"], options=IndexOptions(workers=0))
        query = library.query(like=photos / "city.jpg", model="dreamsim-dino")
        with pytest.raises(TypeError, match="positional argument"):
            library.search(query, 2, False)
        assert [m.path for m in library.search(query, k=1, include_self=True).matches] == [str(photos / "city.jpg")]


def test_a_dry_run_needs_no_weights_and_checks_its_engine_once(tmp_path):
    """A dry run only scans: it builds no model (no weights, none looked for), and its
    options are checked once (``check_engine``: a second check had crept into ``index_folders``)."""
    photos = _photos(tmp_path / "photos")
    checks = []

    def count(frame, event, arg) -> None:
        if event == "call" and frame.f_code is check_engine.__code__:
            checks.append(frame.f_lineno)

    with Library.open(tmp_path / "lib", weights_dir=tmp_path / "no-weights", device="cpu") as library:
        sys.setprofile(count)
        try:
            report = library.index([photos], ["dreamsim-dino"], IndexOptions(dry_run=True))
        finally:
            sys.setprofile(None)
        assert (report.new, report.embedded, len(checks)) == (4, 0, 1)
        with pytest.raises(DreamsearchError, match="unknown model 'dreamsimm'"):
            library.index([photos], ["dreamsimm"], IndexOptions(dry_run=True))
        assert library.vector_counts() == {}


def test_compile_and_threads_reach_every_model_the_library_builds(tmp_path, tiny_weights):
    """What `index --compile --threads N` asks for, from Python too (the CLI has nothing else)."""
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu", compile=True, threads=3) as library:
        pending = library.pending_model("dreamsim-dino")
    assert (pending.compile, pending.threads) == (True, 3)
