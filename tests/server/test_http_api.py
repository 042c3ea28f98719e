"""The HTTP API's contract, through FastAPI's TestClient with the lifespan running, on a
real library indexed with the tiny DreamSim-DINO (official checkpoint layout)."""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from dreamsearch.server.app import create_app
from dreamsearch.server.security import Settings
from tests.helpers.http_api import upload
from tests.helpers.images import make_photos

MODEL = "dreamsim-dino"
ROUTES = {
    ("get", "/api/health"),
    ("get", "/api/status"),
    ("post", "/api/search"),
    ("get", "/api/files/{file_id}/similar"),
    ("post", "/api/search/vector"),
    ("post", "/api/embed"),
    ("post", "/api/compare"),
    ("get", "/api/duplicates"),
    ("get", "/api/files/{file_id}"),
    ("get", "/api/files/{file_id}/thumbnail"),
    ("get", "/api/files/{file_id}/original"),
    ("post", "/api/index"),
    ("get", "/api/jobs/{job_id}"),
    ("get", "/api/jobs/{job_id}/events"),
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("served")
    photos = make_photos(root / "photos")
    (photos / "copy").mkdir()
    (photos / "copy" / "p0.jpg").write_bytes((photos / "p0.jpg").read_bytes())
    with Library.open(root / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    return root / "lib", photos, tiny_weights


@pytest.fixture()
def client(indexed):
    lib, _photos, weights = indexed
    app = create_app(
        Library.open(lib, weights_dir=weights, device="cpu"),
        [MODEL],
        Settings(max_body=2_000_000, allow_folders=(tempfile.gettempdir(),)),
    )  # index jobs of tmp_path
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def test_every_route_is_in_the_openapi_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {(method, path) for path, methods in paths.items() for method in methods} >= ROUTES
    assert client.get("/docs").status_code == 200


def test_an_uploaded_indexed_photo_finds_itself_first(client, indexed):
    _lib, photos, _w = indexed
    response = client.post("/api/search", files=upload(photos / "p3.jpg"), data={"k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL and body["next_offset"] == 3
    first = body["results"][0]
    assert first["path"] == str(photos / "p3.jpg") and first["distance"] < 1e-5 and first["rank"] == 1
    assert set(first) == {"id", "rank", "distance", "path", "size", "width", "height", "also_at", "thumbnail", "links"}
    assert (first["width"], first["height"]) == (200, 150)
    assert first["thumbnail"] == f"/api/files/{first['id']}/thumbnail"
    without_self = client.post("/api/search", files=upload(photos / "p3.jpg"), data={"k": "3", "include_self": "false"})
    assert str(photos / "p3.jpg") not in [r["path"] for r in without_self.json()["results"]]


def test_pages_follow_each_other(client, indexed):
    _lib, photos, _w = indexed
    first = client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": "2"}).json()
    second = client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": "2", "offset": "2"}).json()
    everything = client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": "10"}).json()
    assert [r["path"] for r in first["results"] + second["results"]] == [r["path"] for r in everything["results"]][:4]
    assert [r["rank"] for r in second["results"]] == [3, 4]
    assert everything["next_offset"] is None and len(everything["results"]) == 6  # 6 contents, p0 has a copy


def test_similar_by_id_uses_the_stored_vector_and_leaves_the_file_out(client, indexed):
    _lib, photos, _w = indexed
    found = client.post("/api/search", files=upload(photos / "p0.jpg"), data={"k": "1"}).json()["results"][0]
    assert sorted([found["path"], *found["also_at"]]) == sorted(
        [str(photos / "p0.jpg"), str(photos / "copy" / "p0.jpg")]
    )
    similar = client.get(f"/api/files/{found['id']}/similar", params={"k": 3})
    assert similar.status_code == 200
    paths = [r["path"] for r in similar.json()["results"]]
    assert len(paths) == 3 and not {str(photos / "p0.jpg"), str(photos / "copy" / "p0.jpg")} & set(paths)
    info = client.get(f"/api/files/{found['id']}").json()
    assert info["path"] == found["path"] and info["original"] == f"/api/files/{found['id']}/original"


def test_embed_then_search_by_vector(client, indexed):
    _lib, photos, _w = indexed
    embedded = client.post("/api/embed", files=upload(photos / "p2.jpg")).json()
    assert embedded["model"] == MODEL and embedded["dim"] == len(embedded["vector"]) == 64
    assert abs(np.linalg.norm(embedded["vector"]) - 1) < 1e-4
    found = client.post("/api/search/vector", json={"vector": embedded["vector"], "k": 1}).json()
    assert found["results"][0]["path"] == str(photos / "p2.jpg")
    wrong = client.post("/api/search/vector", json={"vector": [0.1] * 63, "k": 1})
    assert wrong.status_code == 400 and "needs 64" in wrong.json()["detail"]


def test_files_thumbnails_and_originals(client, indexed):
    _lib, photos, _w = indexed
    found = client.post("/api/search", files=upload(photos / "p4.jpg"), data={"k": "1"}).json()["results"][0]
    thumb = client.get(found["thumbnail"], params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 128  # the next fixed size up (issue 21)
    assert client.get(found["thumbnail"], params={"size": 64}).content == thumb.content  # cached
    original = client.get(f"/api/files/{found['id']}/original")
    assert original.status_code == 200 and original.content == (photos / "p4.jpg").read_bytes()


def test_duplicates_and_compare_documents_match_the_cli(client, indexed):
    lib, photos, _w = indexed
    groups = client.get("/api/duplicates", params={"max_distance": 0}).json()
    assert groups["model"] == MODEL and groups["max_distance"] == 0
    (identical,) = [g for g in groups["groups"] if g["kind"] == "identical"]
    assert {identical["keeper"]["path"], identical["others"][0]["path"]} == {
        str(photos / "p0.jpg"),
        str(photos / "copy" / "p0.jpg"),
    }
    assert identical["keeper"]["thumbnail"].startswith("/api/files/")
    one_model = client.post("/api/compare", files=upload(photos / "p1.jpg"))
    assert one_model.status_code == 400 and "two models" in one_model.json()["detail"]


def test_status_and_health(client, indexed):
    lib, photos, _w = indexed
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["models_loaded"] == [MODEL] and health["vectors"] == {MODEL: 6}
    status = client.get("/api/status", params={"failed": True}).json()
    assert status["library"] == str(lib) and status["folders"][0]["path"] == str(photos)
    assert status["folders"][0]["images"] == 7 and status["models"][0]["name"] == MODEL
    assert client.get("/").status_code == 200 and "text/html" in client.get("/").headers["content-type"]


BAD_UPLOADS = {
    "empty": (b"", 415, "empty file"),
    "text": (b"just some words, not a picture\n" * 10, 415, "not an image"),
    "truncated": (None, 415, None),
    "bomb": (None, 413, "over the limit"),
}


def _bad_bytes(kind: str, photos: Path) -> bytes:
    if kind == "truncated":
        return (photos / "p1.jpg").read_bytes()[:300]
    if kind == "bomb":
        buffer = io.BytesIO()
        Image.new("1", (20_000, 15_000)).save(buffer, "PNG")  # 300 MP in a few KB
        return buffer.getvalue()
    return BAD_UPLOADS[kind][0]


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_bad_uploads_get_a_reason_and_the_right_status(client, indexed, kind):
    _lib, photos, _w = indexed
    response = client.post("/api/search", files=upload(_bad_bytes(kind, photos), f"{kind}.jpg"))
    status, words = BAD_UPLOADS[kind][1:]
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and f"{kind}.jpg" in detail and (words is None or words in detail)
    assert client.get("/api/health").json()["status"] == "ok"


def test_bad_requests_are_4xx_with_a_string_detail(client, indexed):
    _lib, photos, _w = indexed
    cases = [
        client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": "0"}),
        client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": str(10**12)}),
        client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": "abc"}),
        client.post("/api/search", data={"k": "3"}),  # no image at all
        client.post("/api/search", files=upload(photos / "p1.jpg"), data={"model": "no-such-model"}),
        client.post("/api/search", files=upload(photos / "p1.jpg"), data={"under": "../../etc"}),
        client.post("/api/search", files=upload(os.urandom(3_000_000))),  # over the 2 MB cap
        client.get("/api/files/999999"),
        client.get("/api/files/999999/thumbnail"),
        client.get("/api/files/999999/original"),
        client.get("/api/files/-1/similar"),
        client.get("/api/files/..%2F..%2Fetc%2Fpasswd/original"),
        client.get("/api/files/%2Fetc%2Fpasswd"),
        client.get("/api/files/1/thumbnail", params={"size": 10**9}),
        client.get("/api/jobs/nope"),
        client.post("/api/index", json={"folders": ["relative/photos"]}),
        client.post("/api/index", json={"folders": [str(photos / ".." / "photos")]}),
        client.post("/api/index", json={"folders": ["/no/such/folder"]}),
        client.post("/api/index", json={"folders": []}),
        client.post("/api/index", content=b"{not json", headers={"content-type": "application/json"}),
        client.get("/api/duplicates", params={"max_distance": 7}),
        client.post("/api/search", files=upload(photos / "p1.jpg"), data={"max_distance": "nan"}),
        client.get("/api/files/99999999999999999999999"),
        client.post(
            "/api/search/vector",
            content=b'{"vector": [' + b",".join([b"NaN"] * 64) + b"]}",
            headers={"content-type": "application/json"},
        ),
        client.post(
            "/api/search",
            content=_chunked_upload(3_000_000),  # no Content-Length: counted as it comes
            headers={"content-type": "multipart/form-data; boundary=cut"},
        ),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert cases[6].status_code == 413 and cases[-1].status_code == 413
    assert client.get("/api/health").json()["status"] == "ok"


def _chunked_upload(size: int):
    yield b'--cut\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
    for _ in range(size // 100_000):
        yield b"x" * 100_000
    yield b"\r\n--cut--\r\n"


def test_a_symlinked_file_pointing_out_of_the_library_is_not_served(client, indexed, tmp_path):
    lib, photos, weights = indexed
    found = client.post("/api/search", files=upload(photos / "p5.jpg"), data={"k": "1"}).json()["results"][0]
    secret = tmp_path / "secret.jpg"
    original = photos / "p5.jpg"
    stat = original.stat()
    secret.write_bytes(original.read_bytes())
    os.utime(secret, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    backup = original.read_bytes()
    original.unlink()
    original.symlink_to(secret)  # same size and mtime: looks as indexed, but lives elsewhere
    try:
        response = client.get(f"/api/files/{found['id']}/original")
        assert response.status_code == 404 and response.content != backup
    finally:
        original.unlink()
        original.write_bytes(backup)
        os.utime(original, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        with Library.open(lib, weights_dir=weights, device="cpu") as library:  # a new inode and ctime: read again
            assert library.index([photos], models=[MODEL], options=IndexOptions(workers=1)).embedded == 0


def test_an_index_job_reports_progress_and_a_second_one_gets_409(client, indexed, tmp_path):
    more = make_photos(tmp_path / "more", 4, seed=50)
    started = client.post("/api/index", json={"folders": [str(more)], "models": [MODEL]})
    assert started.status_code == 202
    job_id = started.json()["job"]
    second = client.post("/api/index", json={"folders": [str(more)]})
    assert second.status_code in (202, 409)  # 202 only if the first already finished
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["state"] == "done" and events[-1]["counts"]["embedded"] == 4
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job_id}").json()["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    found = client.post("/api/search", files=upload(more / "p2.jpg"), data={"k": "1"}).json()["results"][0]
    assert found["path"] == str(more / "p2.jpg")


def test_an_index_job_with_an_unknown_model_is_refused_before_it_starts(client):
    response = client.post("/api/index", json={"folders": ["/"], "models": ["no-such-model"]})
    assert response.status_code == 400 and "no-such-model" in response.json()["detail"]
    assert client.get("/api/health").json()["job"] is None


def test_idle_models_are_unloaded_and_come_back_on_use(indexed):
    lib, photos, weights = indexed
    app = create_app(Library.open(lib, weights_dir=weights, device="cpu"), [MODEL], unload_after=1)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/api/health").json()["models_loaded"] == [MODEL]
        deadline = time.monotonic() + 20
        while client.get("/api/health").json()["models_loaded"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/api/health").json()["models_loaded"] == []
        found = client.post("/api/search", files=upload(photos / "p2.jpg"), data={"k": "1"}).json()["results"]
        assert found[0]["path"] == str(photos / "p2.jpg")


def test_cors_only_for_the_origins_given(indexed):
    lib, _photos, weights = indexed
    app = create_app(
        Library.open(lib, weights_dir=weights, device="cpu"), [MODEL], Settings(cors_origins=("http://photos.example",))
    )
    with TestClient(app, base_url="http://127.0.0.1") as client:
        allowed = client.get("/api/health", headers={"Origin": "http://photos.example"})
        other = client.get("/api/health", headers={"Origin": "http://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://photos.example"
    assert "access-control-allow-origin" not in other.headers


def test_review_findings_stay_fixed(client, indexed):
    """A vector of huge numbers is a direction like any other; paging past the deepest
    allowed result is refused; a page elsewhere cannot post to the API."""
    _lib, photos, _w = indexed
    embedded = client.post("/api/embed", files=upload(photos / "p2.jpg")).json()["vector"]
    huge = client.post("/api/search/vector", json={"vector": [x * 1e30 for x in embedded], "k": 1}).json()
    assert huge["results"][0]["path"] == str(photos / "p2.jpg") and huge["results"][0]["distance"] < 1e-4
    deep = client.post("/api/search", files=upload(photos / "p1.jpg"), data={"offset": str(10**30)})
    assert deep.status_code in (400, 422)
    cross = client.post("/api/search", files=upload(photos / "p1.jpg"), headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "cross-site" in cross.json()["detail"]
    same = client.post("/api/search", files=upload(photos / "p1.jpg"), headers={"Origin": "http://127.0.0.1:8000"})
    assert same.status_code == 200


def test_embed_needs_no_library(tmp_path, tiny_weights, indexed):
    _lib, photos, _w = indexed
    app = create_app(Library.open(tmp_path / "empty", weights_dir=tiny_weights, device="cpu"), [MODEL])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        embedded = client.post("/api/embed", files=upload(photos / "p2.jpg"))
        assert embedded.status_code == 200 and embedded.json()["dim"] == 64
        assert client.get("/api/health").json()["vectors"] == {}
    assert not (tmp_path / "empty").exists()
