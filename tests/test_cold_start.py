"""Commands that need no model start without torch: each runs in a fresh interpreter here,
which reports the heavy modules it had imported when it exited.

Users on 2 cores waited 19-21 s for `status` and 7-16 s for "no such file" while torch,
imported before anything was checked, loaded (issue 23). Timings live in
benchmarks/cold_commands.py; these tests pin what is imported, and that the answers are right.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dreamsearch import Library
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import saved_graph
from tests.helpers.cli import Probed, probe
from tests.helpers.images import photo_folder

MODEL = "dreamsim-dino"
#: Never imported by a command that embeds nothing.
MODEL_MODULES = frozenset({"torch", "open_clip", "timm", "torchvision"})


def cold(*args: str | Path) -> Probed:
    """``dreamsearch ARGS`` in a fresh interpreter, with the heavy modules it imported."""
    return probe(*args, env={"COLUMNS": "200"})


@dataclass(frozen=True)
class Indexed:
    photos: Path
    library: Path
    weights: Path

    def copy(self, where: Path) -> Path:
        """A copy of the library (for a command that changes it)."""
        return Path(shutil.copytree(self.library, where / "library"))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model, tiny_weights) -> Indexed:
    """Four photos and a byte copy of one, indexed with the tiny DreamSim-DINO."""
    base = tmp_path_factory.mktemp("cold")
    photos = photo_folder(base / "photos", 4, (120, 90), 40, "p{}.jpg")
    shutil.copy(photos / "p0.jpg", photos / "p0-copy.jpg")
    library = LibraryLayout.prepare(base / "library")
    index_folders(library, [photos], [tiny_model], IndexOptions(workers=0))
    return Indexed(photos, library.root, tiny_weights)


def test_status_is_cold(indexed):
    run = cold("status", "--library", indexed.library)
    assert run.code == 0, run.stderr
    assert f"{indexed.photos.resolve()}: 5 images, 0 unreadable" in run.stdout
    assert f"model {MODEL}: 4 vectors, dim 64, index IDMap2,Flat of 4 vectors, checksum ok" in run.stdout
    assert not run.imported & MODEL_MODULES


def test_forget_is_cold(indexed, tmp_path):
    library = indexed.copy(tmp_path)
    run = cold("forget", indexed.photos, "--library", library)
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == f"forgot {indexed.photos.resolve()} (5 files)"
    assert not run.imported & MODEL_MODULES
    with Library.open(library) as after:
        assert after.folders() == [] and after.vector_counts() == {MODEL: 0}


def test_duplicates_is_cold(indexed):
    run = cold("duplicates", "-m", MODEL, "--max-distance", "0", "--json", "--library", indexed.library)
    assert run.code == 0, run.stderr
    groups = json.loads(run.stdout)["groups"]
    assert [(g["kind"], sorted(Path(f["path"]).name for f in [g["keeper"], *g["others"]])) for g in groups] == [
        ("identical", ["p0-copy.jpg", "p0.jpg"])
    ]
    assert not run.imported & MODEL_MODULES  # FAISS finds the neighbours: it is imported


def test_query_like_is_cold(indexed):
    run = cold(
        "query", "--like", indexed.photos / "p1.jpg", "-m", MODEL, "-k", "3", "--json", "--library", indexed.library
    )
    assert run.code == 0, run.stderr
    [answer] = json.loads(run.stdout)["queries"]
    with Library.open(indexed.library) as library:
        expected = library.search(library.query(like=indexed.photos / "p1.jpg", model=MODEL), k=3).matches
    assert [r["path"] for r in answer["results"]] == [m.path for m in expected]
    assert [r["distance"] for r in answer["results"]] == [round(m.distance, 6) for m in expected]
    assert len(expected) == 3 and str(indexed.photos / "p1.jpg") not in [m.path for m in expected]
    assert not run.imported & MODEL_MODULES


def test_models_list_is_cold(indexed):
    run = cold("models", "list", "--weights-dir", indexed.weights)
    assert run.code == 0, run.stderr
    rows = {line.split()[1]: line for line in run.stdout.splitlines() if line.startswith("│ ")}
    assert "yes" in rows[MODEL] and "missing" in rows["dreamsim"]
    assert not run.imported & (MODEL_MODULES | {"faiss"})


@pytest.mark.parametrize(
    "args, error",
    [
        ("query {photos}/nope.jpg --library {library}", "error: {photos}/nope.jpg: no such file"),
        ("query {photos} --library {library}", "error: {photos} is a folder: give an image file"),
        ("query -k 0 {photos}/p1.jpg --library {library}", "error: -k must be at least 1"),
        ("query -m dreamsimm {photos}/p1.jpg --library {library}", "error: unknown model 'dreamsimm'"),
        (
            "compare {photos}/nope.jpg --models dreamsim,clip --library {library}",
            "error: {photos}/nope.jpg: no such file",
        ),
        ("forget {photos}-gone --library {library}", "error: {photos}-gone is not an indexed folder"),
        ("embed {photos}/p1.jpg -o - --format npy", "error: npy output needs a file name"),
        (
            "embed {photos}/p1.jpg -o {photos}/v.npy --weights-dir {photos}/none",
            "error: model 'dreamsim' needs weights missing from {photos}/none",
        ),
    ],
    ids=[
        "missing-file",
        "folder-as-image",
        "k-0",
        "unknown-model",
        "compare-missing-file",
        "forget-unknown-folder",
        "embed-npy-to-stdout",
        "embed-missing-weights",
    ],
)
def test_argument_errors_are_cold(indexed, args, error):
    where = {"photos": indexed.photos, "library": indexed.library}
    run = cold(*(arg.format(**where) for arg in args.split()))
    assert run.code == 1
    assert run.stderr.startswith(error.format(**where)) and len(run.stderr.splitlines()) == 1
    assert not run.imported & (MODEL_MODULES | {"faiss"})


def test_a_query_file_that_is_not_an_image_is_told_before_the_model_loads(indexed, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    run = cold("query", notes, "-m", MODEL, "--weights-dir", indexed.weights, "--library", indexed.library)
    assert (run.code, run.stderr) == (1, f"error: {notes}: not an image Pillow can read")
    assert not run.imported & MODEL_MODULES


def test_a_no_op_index_with_threads_is_cold(indexed, tmp_path):
    run = cold(
        "index",
        indexed.photos,
        "-m",
        MODEL,
        "--weights-dir",
        indexed.weights,
        "--threads",
        "1",
        "--workers",
        "0",
        "--json",
        "--library",
        indexed.copy(tmp_path),
    )
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert (summary["unchanged"], summary["embedded"]) == (5, 0)
    assert not run.imported & MODEL_MODULES


def test_threads_are_set_when_a_model_loads(indexed, tmp_path):
    """--threads still reaches torch once a file needs embedding (``get_num_threads`` in a
    thread that has not run torch yet reports the count last set in any thread)."""
    threads = (os.cpu_count() or 1) + 1  # never the default
    photos = photo_folder(tmp_path / "new", 1, (120, 90), 90, "n{}.jpg")
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sys.modules['torch'].get_num_threads()))\n"
        "from dreamsearch.cli import main\n"
        "main(prog_name='dreamsearch')"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "index",
            str(photos),
            "-m",
            MODEL,
            "--weights-dir",
            str(indexed.weights),
            "--threads",
            str(threads),
            "--workers",
            "0",
            "--quiet",
            "--library",
            str(indexed.copy(tmp_path)),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(threads)]


def unconverted(weights: Path, tmp_path: Path) -> Path:
    """A copy of ``weights`` without a saved OpenVINO graph: a test that ran before on this
    worker may have saved one there (``test_precision.py`` runs the tiny weights on
    OpenVINO), and the tests below watch the first run convert."""
    return Path(shutil.copytree(weights, tmp_path / "weights", ignore=shutil.ignore_patterns(saved_graph.FOLDER)))


def test_a_query_runs_without_torch_once_the_models_openvino_graph_is_saved(indexed, tmp_path):
    """The first query on OpenVINO converts the model (torch) and saves its graph; later
    ones read the graph alone, with the same answer."""
    pytest.importorskip("openvino")
    weights = unconverted(indexed.weights, tmp_path)
    args = (
        "query",
        indexed.photos / "p1.jpg",
        "-m",
        MODEL,
        "-k",
        "2",
        "--json",
        "--no-server",
        "--weights-dir",
        weights,
        "--library",
        indexed.library,
    )
    first = probe(*args, env={"DREAMSEARCH_BACKEND": "openvino"})
    assert first.code == 0, first.stderr
    assert "torch" in first.imported  # converted here
    again = probe(*args, env={"DREAMSEARCH_BACKEND": "openvino"})
    assert again.code == 0, again.stderr
    assert not again.imported & MODEL_MODULES
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert len(json.loads(again.stdout)["queries"][0]["results"]) == 2


def test_an_index_run_on_the_cpu_imports_no_torch_once_the_models_graph_is_saved(indexed, tmp_path):
    """New photos, embedded by the saved OpenVINO graph: nothing in the run (reading
    threads asking whether to decode on a GPU included) imports torch, which cost a reading
    thread 1.5 s and the process ~400 MB."""
    pytest.importorskip("openvino")
    weights = unconverted(indexed.weights, tmp_path)
    first_photos = photo_folder(tmp_path / "first", 2, (120, 90), 41, "a{}.jpg")
    new_photos = photo_folder(tmp_path / "new", 3, (120, 90), 42, "b{}.jpg")
    common = ("-m", MODEL, "--weights-dir", weights, "--library", tmp_path / "library", "--json")
    env = {"DREAMSEARCH_BACKEND": "openvino"}
    first = probe("index", first_photos, *common, env=env)
    assert first.code == 0, first.stderr
    assert "torch" in first.imported  # converted here, and the graph saved
    again = probe("index", new_photos, *common, env=env)
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["new"] == 3
    assert not again.imported & MODEL_MODULES
