"""First-use polish: model names checked first with a suggestion, a folder given as a query
image, `compare --like`, reading commands that create nothing, importing one's own
weights, and a damaged clip checkpoint told clearly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamsearch.api import Library, Query
from dreamsearch.errors import DreamsearchError, WeightsError
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import load_model
from dreamsearch.models.registry import MODELS, get_spec
from dreamsearch.models.weights import fingerprint, import_weights
from tests.helpers.cli import invoke
from tests.helpers.images import photo_folder
from tests.helpers.official_layout import write_tiny_cache

TYPO = "dreamsim-dnio"
SUGGESTION = f"unknown model '{TYPO}'; did you mean 'dreamsim-dino'?"
TWO = ("dreamsim-dino", "dreamsim-clip")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Tiny dreamsim-dino and dreamsim-clip; `photos` indexed with both, `more` with dino only."""
    base = tmp_path_factory.mktemp("polish")
    weights = write_tiny_cache(base / "weights", "dino_vitb16")
    write_tiny_cache(weights, "clip_vitb32", seed=1)
    photos = photo_folder(base / "photos", 6, (160, 120), 300, "p{}.jpg", quality=90)
    more = photo_folder(base / "more", 2, (160, 120), 400, "m{}.jpg", quality=90)
    library = LibraryLayout.prepare(base / "lib")
    dino, clip = (load_model(name, weights_dir=weights, device="cpu") for name in TWO)
    index_folders(library, [photos], [dino, clip], IndexOptions(workers=0))
    index_folders(library, [more], [dino], IndexOptions(workers=0))
    return photos, more, library, weights


# 1. model names -------------------------------------------------------------------------


def test_get_spec_suggests_the_closest_name_or_lists_them_all():
    with pytest.raises(DreamsearchError) as close:
        get_spec(TYPO)
    assert str(close.value) == SUGGESTION
    with pytest.raises(DreamsearchError) as far:
        get_spec("nope")
    assert str(far.value).startswith("unknown model 'nope'; known models: dreamsim, dreamsim-dino")


LIB, WEIGHTS = ["--library", "{lib}"], ["--weights-dir", "{weights}"]


@pytest.mark.parametrize(
    "command",
    [
        ["index", "{photos}", "-m", TYPO, *LIB, *WEIGHTS],
        ["query", "{image}", "-m", TYPO, *LIB, *WEIGHTS],
        ["query", "--like", "{image}", "-m", TYPO, *LIB],
        ["compare", "{image}", "--models", f"dreamsim,{TYPO}", *LIB, *WEIGHTS],
        ["duplicates", "-m", TYPO, *LIB],
        ["embed", "{image}", "-m", TYPO, "-o", "{out}", *WEIGHTS],
        ["models", "fetch", TYPO, *WEIGHTS],
        ["models", "import", TYPO, "{image}", *WEIGHTS],
        ["eval", "retrieval", "{photos}", "-m", "clip", "-m", TYPO, *LIB, *WEIGHTS],
        ["eval", "nights", "{photos}", "-m", "psnr", "-m", TYPO, *LIB, *WEIGHTS],
        ["serve", "--models", f"dreamsim,{TYPO}", *LIB, *WEIGHTS],
    ],
    ids=lambda c: " ".join(c[:3]),
)
def test_every_command_checks_model_names_first(tmp_path, command):
    photos = photo_folder(tmp_path / "photos", 1, (64, 48), 1, "{}.jpg")
    places = {
        "photos": photos,
        "image": photos / "0.jpg",
        "out": tmp_path / "v.npy",
        "lib": tmp_path / "lib",
        "weights": tmp_path / "weights",
    }
    outcome = invoke(*(part.format(**places) for part in command))
    assert outcome.exit_code == 1, outcome.output
    assert outcome.stderr.strip() == f"error: {SUGGESTION}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # nothing opened or created


def test_library_api_checks_model_names_before_opening(tmp_path):
    with Library.open(tmp_path / "lib", weights_dir=tmp_path / "weights") as library:
        for call in (
            lambda: library.search(Query(TYPO, ("x",), np.ones(4, np.float32))),
            lambda: library.query(b"", model=TYPO),
            lambda: library.query(like="x.jpg", model=TYPO),
            lambda: library.query(vector=[1.0], model=TYPO),
            lambda: library.query(text="ramen", model=TYPO),
            lambda: library.duplicates(TYPO),
            lambda: library.compare("x.jpg", ["dreamsim-dino", TYPO]),
            lambda: library.index([tmp_path], [TYPO]),
        ):
            with pytest.raises(DreamsearchError) as info:
                call()
            assert str(info.value) == SUGGESTION
    assert sorted(tmp_path.iterdir()) == []


# 2. a folder as the query image ---------------------------------------------------------


@pytest.mark.parametrize("command", ["query", "compare"])
def test_a_folder_as_query_image_says_what_to_pass(tmp_path, command):
    folder = tmp_path / "photos"
    folder.mkdir()
    outcome = invoke(command, str(folder), "--library", str(tmp_path / "lib"))
    assert outcome.exit_code == 1
    assert outcome.stderr.strip() == (
        f"error: {folder} is a folder: give an image file (or `dreamsearch index {folder}` to add the folder)"
    )


# 3. compare --like ----------------------------------------------------------------------


def test_compare_like_uses_the_stored_vectors_without_loading_a_model(two_models, tmp_path):
    photos, _more, library, _weights = two_models
    no_weights = ["--library", str(library.root), "--weights-dir", str(tmp_path / "none"), "--device", "cpu"]
    like = str(photos / "p2.jpg")
    outcome = invoke("compare", "--like", like, "--models", ",".join(TWO), "-k", "3", "--json", *no_weights)
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert document["query"] == like and list(document["models"]) == list(TWO)
    for name in TWO:  # the same lists as `query --like` with each model
        alone = invoke("query", "--like", like, "-m", name, "-k", "3", "--json", *no_weights)
        assert document["models"][name] == json.loads(alone.stdout)["queries"][0]["results"]
        assert all("p2" not in r["path"] for r in document["models"][name])
    assert not (tmp_path / "none").exists()


def test_compare_like_embeds_the_file_for_a_model_without_its_vector(two_models):
    _photos, more, library, weights = two_models
    with Library.open(library.root, weights_dir=weights, device="cpu") as api:
        comparison = api.compare(None, list(TWO), k=3, like=more / "m0.jpg")
        assert api.loaded_models() == ["dreamsim-clip"]  # dino had the stored vector
        for name in TWO:
            embedded = api.search(api.query(more / "m0.jpg", model=name), k=3).matches
            assert [m.path for m in comparison.results[name]] == [m.path for m in embedded]
            assert [m.distance for m in comparison.results[name]] == pytest.approx(
                [m.distance for m in embedded], abs=1e-5
            )
        with pytest.raises(DreamsearchError, match="is not in the library"):
            api.compare(None, list(TWO), like=weights / "unindexed.jpg")


@pytest.mark.parametrize("query", [[], ["{image}", "--like", "{image}"]], ids=["neither", "both"])
def test_compare_takes_an_image_or_like_but_not_both(two_models, query):
    photos, _more, library, _weights = two_models
    args = [part.format(image=photos / "p1.jpg") for part in query]
    outcome = invoke("compare", *args, "--library", str(library.root))
    assert outcome.exit_code == 1
    assert outcome.stderr.strip() == "error: give one query: an image file, or --like PATH (an indexed file)"


# 4. reading commands create nothing -----------------------------------------------------


@pytest.fixture
def online_home(tmp_path, monkeypatch):
    """Default folders under ``tmp_path/home``; downloads allowed, but every server refuses."""
    for variable in (
        "DREAMSEARCH_WEIGHTS",
        "DREAMSEARCH_LIBRARY",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "HF_HUB_OFFLINE",
        "DREAMSEARCH_OFFLINE",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, spec in MODELS.items():  # the discard port: connection refused at once
        files = tuple(dataclasses.replace(f, url=f"http://127.0.0.1:9/{Path(f.url).name}") for f in spec.files)
        monkeypatch.setitem(MODELS, name, dataclasses.replace(spec, files=files))
    return tmp_path / "home"


@pytest.mark.parametrize(
    "command",
    [
        ["models", "list"],
        ["query", "{image}"],
        ["query", "{image}", "--library", "{gone}/lib", "--weights-dir", "{gone}/weights"],
        ["compare", "{image}"],
        ["duplicates"],
        ["status"],
        ["embed", "{image}", "-m", "resnet50", "-o", "{gone}/v.npy"],
        ["embed", "{image}", "-m", "resnet50", "-o", "{gone}/v.npy", "--weights-dir", "{gone}/weights"],
    ],
    ids=lambda c: " ".join(c),
)
def test_reading_commands_create_no_folder(tmp_path, online_home, command):
    image = tmp_path / "q.jpg"
    Image.new("RGB", (32, 32)).save(image)
    outcome = invoke(*(part.format(image=image, gone=tmp_path / "gone") for part in command))
    assert "Traceback" not in outcome.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jpg"]


def test_query_with_missing_weights_creates_no_weights_folder(two_models, tmp_path, online_home):
    photos, _more, library, _weights = two_models
    outcome = invoke(
        "query",
        str(photos / "p1.jpg"),
        "-m",
        "dreamsim-dino",
        "--library",
        str(library.root),
        "--weights-dir",
        str(tmp_path / "weights"),
    )
    assert outcome.exit_code == 1 and "cannot download" in outcome.stderr
    assert not (tmp_path / "weights").exists()


# 5. importing one's own weights ---------------------------------------------------------


def test_import_own_weights_with_no_verify_keeps_their_vectors_apart(tmp_path):
    mine = tmp_path / "my.pt"
    torch.save({"visual.proj": torch.zeros(2, 2)}, mine)
    weights = tmp_path / "weights"
    refused = invoke("models", "import", "clip", str(mine), "--weights-dir", str(weights))
    assert refused.exit_code == 1
    assert "does not match the published" in refused.stderr and "--no-verify" in refused.stderr
    assert not (weights / "baselines" / "ViT-B-32.pt").exists()

    imported = invoke("models", "import", "clip", str(mine), "--weights-dir", str(weights), "--no-verify")
    assert imported.exit_code == 0, imported.output
    assert (
        f"warning: {mine} are not the published weights of 'clip'; their vectors are kept apart from the published ones"
    ) in imported.stderr
    assert (weights / "baselines" / "ViT-B-32.pt").read_bytes() == mine.read_bytes()
    listing = invoke("models", "list", "--weights-dir", str(weights), env={"COLUMNS": "200"})
    assert "yes (not published)" in next(line for line in listing.stdout.splitlines() if "openai_clip_vitb32" in line)

    same_bytes = tmp_path / "same"  # the same bytes, as if they were the published file
    (same_bytes / "baselines").mkdir(parents=True)
    (same_bytes / "baselines" / "ViT-B-32.pt").write_bytes(mine.read_bytes())
    assert fingerprint(get_spec("clip"), weights) != fingerprint(get_spec("clip"), same_bytes)


def test_a_verified_import_forgets_that_earlier_weights_were_not_published(tmp_path, official_cache):
    spec, weights = get_spec("dreamsim-dino"), tmp_path / "weights"
    cache = official_cache("dino_vitb16")
    import_weights(spec, weights, cache, verify=False)
    apart = fingerprint(spec, weights)
    for weight in spec.files:
        (weights / weight.path).unlink()
    import_weights(spec, weights, cache)
    assert fingerprint(spec, weights) != apart
    assert fingerprint(spec, weights) == fingerprint(spec, cache)


# 6. clip: a damaged checkpoint (loading without warnings: tests/models/test_baselines.py) ----


def test_a_damaged_clip_checkpoint_is_still_a_clear_error(tmp_path):
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "ViT-B-32.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(WeightsError, match="ViT-B-32.pt: not an OpenAI CLIP checkpoint"):
        load_model("clip", weights_dir=tmp_path, device="cpu")
