"""A model with a saved OpenVINO graph starts loading in the background before ``query``
imports the catalog layer (``load_ahead``): the same model, sooner, taken by the library's
pool only when it is the very model the pool would build."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'dreamsearch[openvino]')")
pytestmark = pytest.mark.slow  # the first load converts the model through OpenVINO

from dreamsearch.models import PendingModel, precision  # noqa: E402
from tests.helpers.official_layout import write_tiny_cache  # noqa: E402

MODEL = "dreamsim-dino"


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """Tiny weights whose OpenVINO graph a first load has converted and saved."""
    monkeypatch.setenv(precision.ENV, "openvino")
    root = write_tiny_cache(tmp_path / "weights", "dino_vitb16")
    first = PendingModel(MODEL, weights_dir=root, device="cpu", allow_download=False)
    first.load()
    return root, first


def _pending(root) -> PendingModel:
    return PendingModel(MODEL, weights_dir=root, device="cpu", allow_download=False)


def _until_loaded(model: PendingModel, within_s: float = 60.0) -> bool:
    end = time.monotonic() + within_s
    while not model.loaded and time.monotonic() < end:
        time.sleep(0.05)
    return model.loaded


def test_a_saved_graph_loads_in_the_background_and_gives_the_same_vectors(saved):
    root, first = saved
    model = _pending(root)
    assert model.start_loading() is not None
    assert _until_loaded(model)  # nobody called load: the background did
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    embedder = model.load()
    assert embedder.backend == "openvino"
    np.testing.assert_array_equal(embedder.embed(pixels), first.load().embed(pixels))


def test_without_a_saved_graph_nothing_is_built_in_the_background(tmp_path, monkeypatch):
    """Building from the checkpoint imports torch: that stays in the foreground, after the
    picture was found readable."""
    monkeypatch.setenv(precision.ENV, "openvino")
    model = _pending(write_tiny_cache(tmp_path / "weights", "dino_vitb16"))
    model.start_loading()
    assert not _until_loaded(model, within_s=2.0)


def test_a_model_loaded_before_the_library_opens_is_the_one_its_queries_use(saved, tmp_path):
    """``query`` starts loading before it imports the catalog layer (``load_ahead``); the
    library's model pool takes that very handle, already loading, rather than a new one."""
    from dreamsearch import Library
    from dreamsearch.models import load_ahead

    root, _ = saved
    load_ahead(MODEL, weights_dir=root, device="cpu", precision=None)
    with Library.open(tmp_path / "library", weights_dir=root, device="cpu") as library:
        assert _until_loaded(library.pending_model(MODEL))  # nobody asked it to load


def test_a_model_loaded_ahead_with_other_settings_is_not_taken(saved, tmp_path):
    from dreamsearch import Library
    from dreamsearch.models import load_ahead

    root, _ = saved
    load_ahead(MODEL, weights_dir=root, device="cpu", precision="int8")
    with Library.open(tmp_path / "library", weights_dir=root, device="cpu") as library:
        assert not _until_loaded(library.pending_model(MODEL), within_s=2.0)


def test_a_new_library_reads_its_first_files_while_the_model_compiles(saved, tmp_path, monkeypatch):
    """A library that has never held the model learns its vector size from the saved graph
    and records it at once; the compile runs in the model thread while the reading threads
    decode (it used to come first, 0.3-0.9 s of every new library's start for ``clip``)."""
    from dreamsearch import Library
    from dreamsearch.models import saved_graph
    from tests.helpers.images import photo_folder

    root, first = saved
    decoded = threading.Event()
    seen_while_compiling: list[bool] = []
    compile_runner = saved_graph.runner

    def runner_after_a_decode(model, precision_name, threads):
        seen_while_compiling.append(decoded.wait(timeout=30))  # without the overlap: 30 s, then False
        return compile_runner(model, precision_name, threads)

    monkeypatch.setattr(saved_graph, "runner", runner_after_a_decode)
    folder = photo_folder(tmp_path / "photos", 4, (160, 120), seed=3, name="p{}.jpg")
    with Library.open(tmp_path / "library", weights_dir=root, device="cpu") as library:
        report = library.index([folder], [MODEL], on_picture=lambda file, picture: decoded.set())
        assert (report.new, report.failures) == (4, [])
        assert seen_while_compiling == [True]
        [model] = library.status().models
        assert (model.name, model.vectors, model.dim) == (MODEL, 4, first.load().dim)


def test_index_compiles_ahead_only_for_a_library_that_does_not_exist_yet(saved, tmp_path, monkeypatch):
    """A new library embeds everything it finds: ``index`` compiles its model while it imports
    the catalog layer. An existing library may find nothing to embed, and then must load
    no model at all; when it does find new files, the run's model thread compiles."""
    from dreamsearch.models import saved_graph
    from tests.helpers.cli import invoke_in
    from tests.helpers.images import photo_folder

    root, _ = saved
    compiled_in: list[str] = []
    compile_runner = saved_graph.runner

    def recording_runner(model, precision_name, threads):
        compiled_in.append(threading.current_thread().name)
        return compile_runner(model, precision_name, threads)

    monkeypatch.setattr(saved_graph, "runner", recording_runner)
    folder = photo_folder(tmp_path / "photos", 2, (160, 120), seed=5, name="p{}.jpg")
    library = tmp_path / "library"

    def index() -> None:
        outcome = invoke_in(library, root, "index", str(folder), "-m", MODEL, "-q")
        assert outcome.exit_code == 0, outcome.output

    index()
    assert compiled_in == [f"dreamsearch-load-{MODEL}"]
    index()  # nothing new: no model
    assert len(compiled_in) == 1
    photo_folder(folder, 1, (160, 120), seed=5, name="p{}.jpg", start=2)
    index()
    assert compiled_in[1:] == ["dreamsearch-model-1"]
