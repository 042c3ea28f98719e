"""The API's contract: its schema and its pages (issue 21, items 14 and 15).

The OpenAPI schema is the contract. Schemathesis reads ``/openapi.json`` from a live
``dreamsearch serve``, generates requests that fit it and requests that break it in every
way it allows (``--mode all``: positive and negative),
follows the links between routes (the stateful phase: a search's ids into the file routes,
an index job's id into the job routes), and checks every answer with all of its checks
(``--checks all``: status codes, content types, headers and bodies as declared, valid
input accepted, invalid input refused, no 5xx, auth enforced). Once without a token and
once with one. What the schema cannot say (an upload is a picture) is in
``schemathesis_hooks.py``.

The run is Schemathesis's own command line, so the assertion message is its report, each
failure with a curl line that reproduces it. The seed is fixed: a failure here is the same
one on every run; ``st run`` with other seeds explores further.

Pages: results ``offset + 1`` to ``offset + k`` are a slice of one list per query, so
following ``next_offset`` never shows a result twice nor skips one, whatever the index
(IVF, IVF-PQ) and however many results tie.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dreamsearch.api import Library
from dreamsearch.catalog import Catalog, FileEntry
from dreamsearch.indexer import IndexOptions
from dreamsearch.layout import LibraryLayout
from dreamsearch.server.app import create_app
from dreamsearch.vector_index import rebuild, with_kind
from dreamsearch.vector_index.recall import clustered_unit_vectors
from tests.helpers.backends import with_saved_graphs
from tests.helpers.images import make_photos
from tests.helpers.official_layout import write_tiny_cache
from tests.server.serving import running_server

ROOT = Path(__file__).resolve().parents[2]
INDEXED = ("dreamsim-dino", "dreamsim-synclr")  # two, so that compare has something to compare
MODELS = (*INDEXED, "dreamsim-clip")  # served; the last has no vectors (its searches are 404s)
TOKEN = "schema-test-token"
#: Cases per route and phase: the two runs take ~20 s each here (2 cores).
MAX_EXAMPLES = 25
SEED = 21


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Six photos, a byte copy (a duplicate group) and a file that is not a picture (a
    failed entry), indexed with two tiny models, and a third model's weights. No name that
    is not UTF-8: the API writes those as ``\\udcXX`` escapes (tested in
    test_jobs_and_thumbnails.py), which Schemathesis 4.32 cannot hold (its Rust JSON layer
    refuses lone surrogates)."""
    root = tmp_path_factory.mktemp("schema")
    weights = write_tiny_cache(root / "weights")
    write_tiny_cache(weights, "synclr_vitb16", seed=1)
    with_saved_graphs(write_tiny_cache(weights, "clip_vitb32", seed=2), *MODELS)  # the servers load no torch
    photos = make_photos(root / "photos", 6)
    (photos / "copy.jpg").write_bytes((photos / "p0.jpg").read_bytes())
    (photos / "notes.jpg").write_bytes(b"not a picture\n" * 20)
    with Library.open(root / "lib", weights_dir=weights, device="cpu") as opened:
        opened.index([photos], models=list(INDEXED), options=IndexOptions(workers=1))
    return root / "lib", photos, weights


def schemathesis_run(url: str, photos: Path, token: str | None) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    environment = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.server.schemathesis_hooks",
        "DREAMSEARCH_SCHEMA_PHOTOS": str(photos),
        "NO_COLOR": "1",
    }
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=environment)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("token", [None, TOKEN], ids=["without a token", "with a token"])
def test_schemathesis_finds_no_answer_the_schema_does_not_describe(library, token, tmp_path):
    lib, photos, weights = library
    lib = Path(shutil.copytree(lib, tmp_path / "lib"))  # its index jobs change the library
    with running_server(lib, weights, "--models", ",".join(MODELS), env={"DREAMSEARCH_TOKEN": token or ""}) as url:
        run = schemathesis_run(url, photos, token)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-30_000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):  # each ran (a skipped phase says so instead)
        assert f"{phase} (in " in report, report[-5_000:]


def test_a_served_model_with_nothing_indexed_is_a_404_as_the_schema_says(library):
    """The schema lists every served model; one with no vectors yet has nothing to search
    in (404), which a client can tell from a request it got wrong (400)."""
    lib, photos, weights = library
    unindexed = MODELS[-1]
    app = create_app(Library.open(lib, weights_dir=weights, device="cpu"), list(MODELS))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        schema = client.get("/openapi.json").json()
        assert unindexed in schema["components"]["schemas"]["VectorSearch"]["properties"]["model"]["anyOf"][0]["enum"]
        dim = client.post(
            "/api/embed", files={"image": ("p.jpg", (photos / "p1.jpg").read_bytes())}, data={"model": unindexed}
        ).json()["dim"]
        answers = [
            client.post("/api/search/vector", json={"vector": [0.5] * dim, "model": unindexed}),
            client.get("/api/files/1/similar", params={"model": unindexed}),
            client.get("/api/duplicates", params={"model": unindexed}),
            client.post(
                "/api/search", files={"image": ("p.jpg", (photos / "p1.jpg").read_bytes())}, data={"model": unindexed}
            ),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert f"nothing is indexed with model '{unindexed}'" in answer.json()["detail"]


def test_a_library_not_made_yet_is_a_404_for_what_it_does_not_hold_yet(tmp_path, tiny_weights):
    """Before the first index job there is nothing to search or list (404), not a request
    the client got wrong (400); health and embed work."""
    app = create_app(Library.open(tmp_path / "not yet", weights_dir=tiny_weights, device="cpu"), [PAGED_MODEL])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answers = [
            client.get("/api/status"),
            client.get("/api/duplicates"),
            client.get("/api/files/1"),
            client.get("/api/files/1/similar"),
            client.post("/api/search/vector", json={"vector": [1.0] * 64}),
        ]
        assert [a.status_code for a in answers] == [404] * len(answers), [a.text for a in answers]
        assert all("no library yet" in a.json()["detail"] for a in answers)
        assert client.get("/api/health").status_code == 200
    assert not (tmp_path / "not yet").exists()


def test_a_vector_of_numbers_near_the_float_limit_is_a_direction_like_any_other(library):
    """Found by Schemathesis: JSON numbers up to 1.8e308 fit the schema; their squares
    overflowed, and such a vector was refused as 'all zeros'."""
    lib, photos, weights = library
    app = create_app(Library.open(lib, weights_dir=weights, device="cpu"), list(INDEXED))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        vector = client.post("/api/embed", files={"image": ("q.jpg", (photos / "p2.jpg").read_bytes())}).json()[
            "vector"
        ]
        for scale in (1e300, 1e-300):
            found = client.post("/api/search/vector", json={"vector": [x * scale for x in vector], "k": 1})
            assert found.status_code == 200, found.text
            assert found.json()["results"][0]["path"] == str(photos / "p2.jpg")


# pages -----------------------------------------------------------------------------------

PAGED_MODEL = "dreamsim-dino"  # vectors placed by hand under a registered name: no model runs
DIM = 16


def paged_library(root: Path, kind: str, n: int = 3000, tie: int = 3) -> Path:
    """``n`` files whose vectors are clustered and come in runs of ``tie`` identical ones
    (one photo exported again with other metadata: other bytes, the same pixels), under
    an index of ``kind`` built whatever the size policy says."""
    vectors = clustered_unit_vectors(n, DIM, centres=20, seed=3)
    for start in range(0, n, tie):
        vectors[start : start + tie] = vectors[start]
    library = LibraryLayout.prepare(root / "lib")
    photos = root / "photos"
    photos.mkdir()
    entries = []
    for i in range(n):
        (photos / f"{i}.jpg").write_bytes(b"x")
        mtime = (1_000 + i) * 1_000_000_000
        os.utime(photos / f"{i}.jpg", ns=(mtime, mtime))
        entries.append(FileEntry(f"{i}.jpg", 1, mtime, f"h{i}", 1, 1, "JPEG"))
    with Catalog(library.catalog_path) as catalog:
        model = catalog.ensure_model(PAGED_MODEL, DIM, "by hand")
        catalog.commit_batch(
            catalog.attach(photos).id, entries, {PAGED_MODEL: {f"h{i}": v for i, v in enumerate(vectors)}}
        )
        index = rebuild(catalog, model, plan=with_kind(kind, n, DIM))
        index.save(library.index_dir, index.meta.seq, catalog.identity(), catalog.chain_at(model, index.meta.seq) or "")
    return library.root


@pytest.mark.parametrize("kind", ["ivf", pytest.param("ivfpq", marks=pytest.mark.slow)])
def test_following_next_offset_never_repeats_nor_skips_a_result(tmp_path, tiny_weights, kind):
    lib = paged_library(tmp_path, kind)
    queries = clustered_unit_vectors(6, DIM, centres=20, seed=3) + 0.05
    with TestClient(
        create_app(Library.open(lib, weights_dir=tiny_weights, device="cpu"), [PAGED_MODEL]),
        base_url="http://127.0.0.1",
    ) as client:
        for query in queries:

            def page(k: int, offset: int) -> dict:
                vector = query.tolist()  # noqa: B023 - page is called in this iteration only
                response = client.post("/api/search/vector", json={"vector": vector, "k": k, "offset": offset})
                assert response.status_code == 200, response.text
                return response.json()

            paged, offset = [], 0
            while offset is not None and offset < 150:
                body = page(7, offset)
                paged += body["results"]
                offset = body["next_offset"]
            ids = [r["id"] for r in paged]
            assert len(ids) == len(set(ids)), "a result shown on two pages"
            assert [r["rank"] for r in paged] == list(range(1, len(paged) + 1))
            assert ids == [r["id"] for r in page(len(ids), 0)["results"]], "pages differ from one long page"
