"""``--engine ray`` on a local Ray cluster (2 CPUs, started here): the same library as the
local engine, file for file and vector for vector, through copies, moves, changes, bad
files, a killed worker, a decoder crash and a killed driver.

Models run on the default backend here (OpenVINO where it is installed), from the graph
saved once in ``tiny_weights``: every index run starts its own embed actors, and on torch
each paid ~2 CPU-s importing it."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from dreamsearch.api import Library
from dreamsearch.catalog import Catalog
from dreamsearch.errors import DreamsearchError
from dreamsearch.images import Preprocess
from dreamsearch.indexer import IndexOptions, index_folders, ray_engine
from dreamsearch.indexer.pipeline import Contents, ContentState
from dreamsearch.indexer.ray_engine import RayEngine
from dreamsearch.indexer.ray_tasks import DecodeSettings, decode_task, embedders_for
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import PendingModel, precision
from tests.helpers.backends import AS_USERS_RUN
from tests.helpers.cli import invoke
from tests.helpers.crashing_decoder import MARKER
from tests.helpers.images import make_messy_folder, photo_folder, photo_like
from tests.helpers.indexing import kill_at_vectors, library_state
from tests.helpers.official_layout import write_tiny_cache

REPO = Path(__file__).resolve().parents[2]
MODEL = "dreamsim-dino"


pytestmark = pytest.mark.usefixtures("as_users_run")


@pytest.fixture(scope="module")
def cluster(as_users_run) -> str:
    """A Ray cluster of this machine; its workers can crash on ``crashing_decoder.MARKER``."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={
            "worker_process_setup_hook": "tests.helpers.crashing_decoder.install",
            "env_vars": {"PYTHONPATH": str(REPO), **AS_USERS_RUN},
        },
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def index(library: LibraryLayout, folder: Path, weights: Path, engine: str, progress=None, **options):
    models = [PendingModel(MODEL, weights_dir=weights, device="cpu")]
    settings = IndexOptions(**dict(batch_size=4, workers=1, engine=engine, max_pixels=200_000_000) | options)
    return index_folders(library, [folder], models, settings, progress)


def files_table(library: LibraryLayout) -> list[tuple]:
    """Every file row with its content's facts: what ``status`` and searches read."""
    with sqlite3.connect(f"file:{library.catalog_path}?mode=ro", uri=True) as connection:
        return connection.execute(
            "SELECT f.relpath, f.size, f.mtime_ns, f.status, f.error, c.hash, c.size, c.width, c.height, c.format "
            "FROM files f LEFT JOIN contents c ON c.id = f.content_id ORDER BY f.relpath"
        ).fetchall()


def assert_same_library(got: LibraryLayout, expected: LibraryLayout) -> None:
    assert files_table(got) == files_table(expected)
    got_state, expected_state = library_state(got), library_state(expected)
    assert got_state.keys() == expected_state.keys()
    for path, value in expected_state.items():
        if isinstance(value, str):
            assert got_state[path] == value, path
        else:
            assert np.abs(got_state[path] - value).max() <= 1e-6, path


def assert_same_answers(got: LibraryLayout, expected: LibraryLayout, weights: Path, queries: list[Path]) -> None:
    for query in queries:
        answers = []
        for lib in (got, expected):
            with Library.open(lib.root, weights_dir=weights, device="cpu") as library:
                page = library.search(library.query(query, model=MODEL), k=10)
            answers.append([(m.path, round(m.distance, 6)) for m in page.matches])
        assert answers[0] == answers[1] and len(answers[0]) == 10


def counts(report) -> dict:
    return {k: v for k, v in report.summary().items() if k != "seconds"}


@pytest.mark.ray
def test_ray_builds_the_library_the_local_engine_builds_and_keeps_it_in_step(cluster, tmp_path, tiny_weights):
    folder = tmp_path / "photos"
    bad = make_messy_folder(folder)
    photo_folder(folder / "trip", 16, (640, 480), 50, "t{:02d}.jpg", quality=90)
    shutil.copy(folder / "trip" / "t00.jpg", folder / "copy-of-t00.jpg")
    local, on_ray = LibraryLayout.prepare(tmp_path / "local"), LibraryLayout.prepare(tmp_path / "ray")

    first = index(local, folder, tiny_weights, "local"), index(on_ray, folder, tiny_weights, "ray")
    assert counts(first[1]) == counts(first[0]) and first[1].copied == 2  # copy-of-t00, ラーメン.jpg
    assert sorted(first[1].failures) == sorted(first[0].failures)
    assert {Path(p).name for p, _ in first[1].failures} == set(bad)
    assert_same_library(on_ray, local)
    assert_same_answers(on_ray, local, tiny_weights, [folder / "plain.jpg", folder / "trip" / "t03.jpg"])

    (folder / "trip" / "t01.jpg").rename(folder / "moved-t01.jpg")
    shutil.copy(folder / "trip" / "t02.jpg", folder / "trip" / "t02-again.jpg")
    photo_like(640, 480, 999).save(folder / "trip" / "t03.jpg", quality=90)  # changed
    (folder / "trip" / "t04.jpg").unlink()
    (folder / "trip" / "broken.jpg").write_bytes((folder / "trip" / "t05.jpg").read_bytes()[:900])
    os.utime(folder / "trip" / "t06.jpg", ns=(1, 1))  # touched only

    second = index(local, folder, tiny_weights, "local"), index(on_ray, folder, tiny_weights, "ray")
    assert counts(second[1]) == counts(second[0])
    moves = second[1].moved, second[1].copied, second[1].changed, second[1].removed, second[1].failed
    assert moves == (1, 1, 1, 2, 1)  # removed: t04 and the moved file's old path
    assert_same_library(on_ray, local)


@pytest.mark.ray
def test_small_chunks_and_two_folders_give_the_same_library(cluster, tmp_path, tiny_weights, monkeypatch):
    # chunks of 8, then up to 32, per folder: the first folder's 12 files make two, so the byte
    # copies of f00 land in another chunk than it; the second's 8 make one (each chunk starts
    # its own embed actor: ~2 CPU-s here)
    monkeypatch.setattr(ray_engine, "FIRST_CHUNK", 8)
    monkeypatch.setattr(ray_engine, "MAX_CHUNK", 32)
    first = photo_folder(tmp_path / "first", 10, (320, 240), 700, "f{:02d}.jpg", quality=90)
    second = photo_folder(tmp_path / "second", 6, (320, 240), 800, "s{:02d}.jpg", quality=90)
    for name in ("zz-copy-a.jpg", "zz-copy-b.jpg"):
        shutil.copy(first / "f00.jpg", first / name)
    shutil.copy(first / "f01.jpg", second / "from-first.jpg")
    (second / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    libraries = {engine: LibraryLayout.prepare(tmp_path / engine) for engine in ("local", "ray")}
    reports = {
        engine: index_folders(
            library,
            [first, second],
            [PendingModel(MODEL, weights_dir=tiny_weights, device="cpu")],
            IndexOptions(batch_size=3, workers=1, engine=engine),
        )
        for engine, library in libraries.items()
    }
    assert counts(reports["ray"]) == counts(reports["local"])
    assert (reports["ray"].copied, reports["ray"].failed, reports["ray"].embedded) == (3, 1, 16)
    assert_same_library(libraries["ray"], libraries["local"])


def embed_actor_pids() -> set[int]:
    """Processes Ray titled as our embed actors (``ray::MapWorker(MapBatches(Embedders))``)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"Embedders" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.mark.ray
def test_a_killed_embed_worker_is_restarted_and_the_library_is_complete(cluster, tmp_path, tiny_weights):
    folder = photo_folder(tmp_path / "photos", 48, (640, 480), 300, "p{:02d}.jpg", quality=90)
    seen: set[int] = set()
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        while watching.is_set():
            seen.update(embed_actor_pids())
            time.sleep(0.02)

    killed = []

    def kill_on_first_result(report) -> None:
        if report.read and not killed:
            for pid in embed_actor_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, report.read))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    on_ray = LibraryLayout.prepare(tmp_path / "ray")
    try:
        report = index(on_ray, folder, tiny_weights, "ray", kill_on_first_result, batch_size=1)
    finally:
        watching.clear()
        watcher.join()
    assert killed and all(read < 48 for _pid, read in killed), "the kill should land mid-run"
    assert len(seen) >= 2, "Ray should have started another embed actor"
    assert (report.embedded, report.failed) == (48, 0)
    clean = LibraryLayout.prepare(tmp_path / "clean")
    index(clean, folder, tiny_weights, "local")
    assert_same_library(on_ray, clean)


@pytest.mark.ray
def test_a_file_that_crashes_its_decoder_is_recorded_failed_not_retried_forever(
    cluster, tmp_path, tiny_weights, monkeypatch
):
    # fewer tries than the product's (3 and 2): each death costs Ray a new worker process
    # (~3 CPU-s), and a task retried once, then its files alone, is the whole mechanism
    monkeypatch.setattr(ray_engine, "DECODE_TRIES", 2)
    monkeypatch.setattr(ray_engine, "ALONE_TRIES", 1)
    folder = photo_folder(tmp_path / "photos", 20, (320, 240), 400, "p{:02d}.jpg", quality=90)
    photo_like(320, 240, 7).save(folder / "crash.jpg", comment=MARKER)
    shutil.copy(folder / "crash.jpg", folder / "crash-copy.jpg")
    on_ray = LibraryLayout.prepare(tmp_path / "ray")
    report = index(on_ray, folder, tiny_weights, "ray")
    reasons = {Path(path).name: reason for path, reason in report.failures}
    assert reasons.keys() == {"crash.jpg", "crash-copy.jpg"}
    assert (
        f"died {ray_engine.DECODE_TRIES + ray_engine.ALONE_TRIES} times" in reasons["crash.jpg"]
        and reasons["crash-copy.jpg"] == reasons["crash.jpg"]
    )
    assert (report.embedded, report.failed) == (20, 2)
    assert len([v for v in library_state(on_ray).values() if not isinstance(v, str)]) == 20


@pytest.mark.ray
def test_a_killed_driver_at_ray_address_loses_only_batches_in_flight_and_the_rerun_completes_there(
    cluster, tmp_path, tiny_weights
):
    """Both drivers run with a temporary folder of their own, where Ray finds no running
    cluster by itself (as on a laptop sending work to a remote cluster). Ray Data, first
    used by a process not yet connected, started a Ray of its own, and the whole run went
    there whatever --ray-address said: a Ray started there leaves its session in it."""
    photos = 48  # 24 batches of 2: killed at 6-12 vectors in 4 runs here (120 photos: the same test, slower)
    folder = photo_folder(tmp_path / "photos", photos, (800, 600), 500, "p{:03d}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    killed = LibraryLayout.prepare(tmp_path / "killed")
    command = [sys.executable, "-m", "dreamsearch", "index", str(folder), "--library", str(killed.root)]
    command += ["--weights-dir", str(tiny_weights), "-m", MODEL, "--device", "cpu", "--batch-size", "2", "--quiet"]
    command += ["--engine", "ray", "--ray-address", cluster]
    with tempfile.TemporaryDirectory(prefix="ray-") as driver_tmp:  # short: Ray's socket paths must fit 107 bytes
        env = {**os.environ, "RAY_TMPDIR": driver_tmp}
        assert 4 <= kill_at_vectors(command, killed, 4, env) < photos, "the kill should land mid-run"
        subprocess.run(command, check=True, timeout=300, env=env)
        started_here = sorted(path.name for path in Path(driver_tmp).rglob("session_*"))
    assert started_here == [], "a driver started a Ray of its own"
    clean = LibraryLayout.prepare(tmp_path / "clean")
    index(clean, folder, tiny_weights, "local")
    assert_same_library(killed, clean)


@pytest.mark.ray
def test_a_node_without_the_weights_fails_fast_with_the_usual_message(cluster, tmp_path, tiny_weights):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    library = Library.open(tmp_path / "lib", weights_dir=weights, device="cpu")
    library.index([photo_folder(tmp_path / "first", 2, (200, 150), 1, "a{}.jpg")], [MODEL])
    weights.rename(tmp_path / "elsewhere")  # the driver knows the model; the workers find no weights
    started = time.monotonic()
    with pytest.raises(
        DreamsearchError,
        match=r"^on node .*: model 'dreamsim-dino' needs weights missing from .*"
        r"`dreamsearch models import",
    ):
        library.index(
            [photo_folder(tmp_path / "second", 2, (200, 150), 5, "b{}.jpg")], [MODEL], IndexOptions(engine="ray")
        )
    assert time.monotonic() - started < 60


def test_a_decode_task_that_raises_stops_the_run_rather_than_fail_its_files(tmp_path):
    class Unreachable:  # a registry whose every call raises, as a bug would
        class call:
            @staticmethod
            def remote(*args):
                raise RuntimeError("registry unreachable")

    folder = photo_folder(tmp_path / "photos", 2, (200, 150), 1, "a{}.jpg")
    paths = sorted(folder.iterdir())
    batch = {
        "path": np.array([str(p) for p in paths], object),
        "relpath": np.array([p.name for p in paths], object),
        "size": np.array([p.stat().st_size for p in paths]),
        "mtime_ns": np.array([0, 0]),
        "problem": np.array(["", ""], object),
    }
    settings = DecodeSettings((Preprocess(224),), 1 << 30, 10**8, True, 60.0)
    columns = decode_task(batch, Unreachable(), settings)
    assert len(columns["run_error"]) == 2 and all(
        e.startswith("a decode task on node ") and e.endswith(" failed: RuntimeError: registry unreachable")
        for e in columns["run_error"]
    )
    assert list(columns["error"]) == ["", ""]


def test_compile_reaches_the_models_the_embed_actors_build(tmp_path, tiny_weights):
    """``--compile`` was dropped on its way to the nodes: with ``--engine ray`` the actors'
    models ran eager, and nothing said so. The actor class is built here as Ray builds it
    on a node (torch.compile works on the first call, so building it costs no compile)."""
    source = PendingModel(MODEL, weights_dir=tiny_weights, device="cpu", compile=True)
    engine = RayEngine.for_run(None, tmp_path / "catalog.sqlite", [], [source], IndexOptions(engine="ray"))
    actor = embedders_for(engine._on_nodes)()
    assert actor._unable is None and [model.compile for model in actor._models] == [True]


ACTOR_ON_A_NODE = """
import json, pickle, sys
import numpy as np
from dreamsearch.indexer.ray_tasks import embedders_for
on_nodes, pixels = pickle.loads(bytes.fromhex(sys.stdin.read()))
actor = embedders_for(on_nodes)()
columns = actor({"path": np.array(["a.jpg"], object), "kind": np.array(["DecodedContent"], object),
                 "pixels_0": np.array([pixels.tobytes()], object), "run_error": np.array([""], object)})
print(json.dumps({"torch": "torch" in sys.modules, "sqlalchemy": "sqlalchemy" in sys.modules,
                  "error": str(columns["run_error"][0]),
                  "backend": actor._models[0].backend,
                  "vector": np.frombuffer(columns["vector_0"][0], np.float32).tolist()}))
"""


def test_an_embed_actor_on_a_node_with_the_models_saved_graph_imports_no_torch(tmp_path, monkeypatch):
    """An embed actor whose node has the model's saved OpenVINO graph embeds without torch,
    as a local run does; it imported torch only to set its thread count (2.5 CPU-s and
    ~400 MB an actor, paid again by each actor a run starts), and SQLAlchemy through the
    package's ``run`` (0.25 CPU-s a worker). The actor class is built in a
    fresh interpreter, as Ray builds it on a node."""
    pytest.importorskip("openvino")
    monkeypatch.setenv(precision.ENV, "openvino")
    source = PendingModel(MODEL, weights_dir=write_tiny_cache(tmp_path / "weights"), device="cpu")
    side = source.preprocess_spec.size
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    expected = source.load().embed(pixels[None])[0]  # converts the model and saves its graph
    engine = RayEngine.for_run(None, tmp_path / "catalog.sqlite", [], [source], IndexOptions(engine="ray"))
    done = subprocess.run(
        [sys.executable, "-c", ACTOR_ON_A_NODE],
        input=pickle.dumps((engine._on_nodes, pixels)).hex(),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, precision.ENV: "openvino"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    actor = json.loads(done.stdout)
    assert (actor["error"], actor["backend"], actor["torch"]) == ("", "openvino", False)
    assert not actor["sqlalchemy"]  # nor the catalog's layer: workers read and write no catalog
    np.testing.assert_allclose(actor["vector"], expected, atol=1e-6)


def test_a_run_with_nothing_to_read_starts_nothing_on_the_cluster(tmp_path, tiny_weights, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 3, (200, 150), 1, "a{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, folder, tiny_weights, "local")

    def refuse(self):
        raise AssertionError("Ray was started for a run with nothing to read")

    monkeypatch.setattr(RayEngine, "_connect", refuse)
    report = index(library, folder, tiny_weights, "ray")
    assert (report.unchanged, report.read) == (3, 0)


def test_without_ray_installed_the_engine_says_how_to_install_it(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what ``import ray`` does when it is not installed
    folder = photo_folder(tmp_path / "photos", 1, (200, 150), 1, "a{}.jpg")
    result = invoke(
        "index",
        str(folder),
        "--library",
        str(tmp_path / "lib"),
        "--engine",
        "ray",
        "--weights-dir",
        str(tiny_weights),
        "-m",
        MODEL,
    )
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].endswith("pip install 'dreamsearch[ray]'")
    assert not (tmp_path / "lib").exists()
    with pytest.raises(DreamsearchError, match=r"pip install 'dreamsearch\[ray\]'"):
        Library.open(tmp_path / "lib", weights_dir=tiny_weights).index([folder], [MODEL], IndexOptions(engine="ray"))
    assert not (tmp_path / "lib").exists()


def test_ray_address_without_the_ray_engine_is_a_usage_error(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    result = invoke("index", str(folder), "--library", str(tmp_path / "lib"), "--ray-address", "auto")
    assert result.exit_code == 2 and "--ray-address needs --engine ray" in result.output


def test_a_file_read_again_with_other_bytes_lets_go_of_its_first_claim(tmp_path):
    """A retried decode task reads its files again: one that changed, or became unreadable,
    must not keep the content it claimed the first time (its copies would wait forever)."""
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        contents = Contents(catalog, [catalog.ensure_model(MODEL, 8, "fp")])
        assert contents.classify([("h1", "/a.jpg")]) == [(None, None)]
        assert contents.classify([("h1", "/copy.jpg"), ("h1", "/a.jpg")]) == [
            (ContentState.CLAIMED, None),
            (None, None),
        ]
        assert contents.classify([("h2", "/a.jpg")]) == [(None, None)]  # a.jpg changed between tries
        assert not contents.is_claimed("h1") and contents.is_claimed("h2")
        contents.release("/a.jpg")  # then could not be read at all
        assert not contents.is_claimed("h2")
        assert contents.classify([("h2", "/b.jpg")]) == [(None, None)]
        assert contents.abandon("/b.jpg", "too slow") == "h2" and contents.failure("h2") == "too slow"
