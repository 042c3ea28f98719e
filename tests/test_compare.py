"""`compare`: the same query through three models side by side, with their agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dreamsearch.compare import Overlap, overlaps, spearman
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import load_model
from dreamsearch.search import Match
from tests.helpers.cli import invoke_in
from tests.helpers.images import photo_folder
from tests.helpers.official_layout import write_clip_checkpoint, write_resnet50_checkpoint, write_tiny_cache
from tests.helpers.shared import made_once

THREE = ("dreamsim", "clip", "resnet50")


@pytest.fixture(scope="module")
def three_models(run_dir):
    """A library indexed with a tiny DreamSim ensemble and random full-size CLIP and ResNet50,
    made once per run (5-10 s on 2 cores; the tests only read it)."""

    def make(base: Path) -> None:
        weights = write_tiny_cache(base / "weights", "ensemble")
        write_clip_checkpoint(weights)
        write_resnet50_checkpoint(weights)
        photos = photo_folder(base / "photos", 10, (160, 120), 900, "c{:02d}.jpg", quality=90)
        embedders = [load_model(name, weights_dir=weights, device="cpu") for name in THREE]
        index_folders(LibraryLayout.prepare(base / "lib"), [photos], embedders, IndexOptions(workers=0))

    base = made_once(run_dir, "compare_three_models", make)
    return base / "photos", LibraryLayout(base / "lib"), base / "weights"


@pytest.mark.slow
def test_compare_three_models_side_by_side(three_models, tmp_path):
    photos, library, weights = three_models
    grid = tmp_path / "compare.png"
    outcome = invoke_in(
        library.root, weights, "compare", str(photos / "c04.jpg"), "-k", "5", "--json", "--grid", str(grid)
    )
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert list(document["models"]) == list(THREE) and document["k"] == 5
    for name in THREE:  # each row is exactly what `query` answers with that model
        alone = invoke_in(library.root, weights, "query", str(photos / "c04.jpg"), "-k", "5", "-m", name, "--json")
        assert document["models"][name] == json.loads(alone.stdout)["queries"][0]["results"]
        assert all("c04" not in r["path"] for r in document["models"][name])

    pairs = {tuple(o["models"]): o for o in document["overlap"]}
    assert set(pairs) == {("dreamsim", "clip"), ("dreamsim", "resnet50"), ("clip", "resnet50")}
    for (a, b), o in pairs.items():
        paths_a = {r["path"] for r in document["models"][a]}
        paths_b = {r["path"] for r in document["models"][b]}
        assert o["common"] == len(paths_a & paths_b)
        assert o["jaccard"] == pytest.approx(len(paths_a & paths_b) / len(paths_a | paths_b))
        assert o["rank_correlation"] is None or -1 <= o["rank_correlation"] <= 1

    with Image.open(grid) as sheet:  # the query, then a block per model: its 5 results
        assert sheet.width >= 5 * 160 and sheet.height >= 4 * 160

    table = invoke_in(library.root, weights, "compare", str(photos / "c04.jpg"), "-k", "3")
    assert table.exit_code == 0, table.output
    assert "agreement between models" in table.stdout and "dreamsim vs clip" in table.stdout


@pytest.mark.slow
def test_compare_without_models_compares_every_indexed_model_and_needs_two(three_models, tmp_path):
    """It used to default to dreamsim,clip,resnet50 and fail on a library without one of
    them ("nothing is indexed with model 'clip'"); the web UI already compared what is there."""
    photos, library, weights = three_models
    document = json.loads(
        invoke_in(library.root, weights, "compare", str(photos / "c02.jpg"), "-k", "2", "--json").stdout
    )
    assert list(document["models"]) == list(THREE)
    one = LibraryLayout.prepare(tmp_path / "one")
    index_folders(one, [photos], [load_model("clip", weights_dir=weights, device="cpu")], IndexOptions(workers=0))
    outcome = invoke_in(one.root, weights, "compare", str(photos / "c02.jpg"))
    assert outcome.exit_code == 1
    assert "compare needs two indexed models and this library has only 'clip'" in outcome.stderr


@pytest.mark.slow
def test_compare_names_a_model_that_is_not_indexed(three_models):
    photos, library, weights = three_models
    outcome = invoke_in(library.root, weights, "compare", str(photos / "c01.jpg"), "--models", "dreamsim,dreamsim-dino")
    assert outcome.exit_code == 1
    assert "nothing is indexed with model 'dreamsim-dino'" in outcome.stderr
    assert "dreamsearch index --model dreamsim-dino" in outcome.stderr


def _matches(paths: list[str]) -> list[Match]:
    return [Match(rank, 0.1 * rank, path, 1) for rank, path in enumerate(paths, 1)]


def test_agreement_figures_by_hand():
    same = overlaps({"a": _matches(["x", "y", "z"]), "b": _matches(["x", "y", "z"])}, 3)
    assert same == [Overlap(("a", "b"), 3, 1.0, pytest.approx(1.0))]
    reversed_order = overlaps({"a": _matches(["x", "y", "z"]), "b": _matches(["z", "y", "x"])}, 3)[0]
    assert reversed_order.jaccard == 1.0 and reversed_order.rank_correlation == pytest.approx(-1.0)
    # a: x1 y2 ; b: y1 w2 ; union w x y with absent = 3: a (3,1,2), b (2,3,1)
    partial = overlaps({"a": _matches(["x", "y"]), "b": _matches(["y", "w"])}, 2)[0]
    assert partial.common == 1 and partial.jaccard == pytest.approx(1 / 3)
    assert partial.rank_correlation == pytest.approx(-0.5)
    assert spearman([1, 2, 2, 4], [1, 3, 3, 4]) == pytest.approx(1.0)  # ties are averaged
    assert spearman([1], [1]) is None and spearman([3, 3], [1, 2]) is None
