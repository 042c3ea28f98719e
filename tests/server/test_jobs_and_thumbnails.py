"""Issue 21, part T: thumbnails in a few fixed sizes, in a bounded cache, made while an
index job decodes; index jobs that are pruned, uniquely named, refused (409) while another
process writes, and stoppable; scans that skip pseudo file systems and never hold the
writer lock forever; JSON bodies capped; over-long paths and file names that are not
UTF-8 answered without a 500."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from dreamsearch.layout import LibraryLayout
from tests.helpers.http_api import MODEL, app_over, upload
from tests.helpers.images import make_photos, photo_like

SIZE = (400, 300)  # the photos' size where a test does not say
LATIN1 = b"caf\xe9.jpg"  # a Latin-1 name: not valid UTF-8
BROKEN = b"\xff broken.jpg"  # not UTF-8 either, and not a picture: listed as failed
FINAL = ("done", "failed", "interrupted")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_weights):
    """A library over six photos, one large one, a byte copy of p1 named ``caf\\xe9.jpg``
    and an unreadable ``\\xff broken.jpg``."""
    root = tmp_path_factory.mktemp("part_t")
    photos = make_photos(root / "photos", 6, SIZE)
    photo_like(1200, 900, 99).save(photos / "big.jpg", quality=90)
    raw = os.fsencode(photos)
    with open(raw + b"/" + LATIN1, "wb") as handle:
        handle.write((photos / "p1.jpg").read_bytes())
    with open(raw + b"/" + BROKEN, "wb") as handle:
        handle.write(b"not a picture at all" * 10)
    with Library.open(root / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    return root / "lib", photos, tiny_weights


@pytest.fixture()
def client(indexed):
    lib, _photos, weights = indexed
    with TestClient(app_over(lib, weights), base_url="http://127.0.0.1") as client:
        yield client


def file_id(client: TestClient, path: Path) -> int:
    found = client.post("/api/search", files=upload(path), data={"k": "1"})
    assert found.status_code == 200, found.text
    return found.json()["results"][0]["id"]


def wait_for(client: TestClient, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in FINAL:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout_s} s")


def cached_thumbnails(lib: Path) -> dict[str, list[Path]]:
    """The cache's files by size folder."""
    folder = lib / "thumbnails"
    return {d.name: sorted(d.iterdir()) for d in sorted(folder.iterdir()) if d.is_dir()} if folder.exists() else {}


# item 10: thumbnails ------------------------------------------------------------------


def test_a_thumbnail_of_any_size_is_served_at_the_next_fixed_size_and_never_enlarged(client, indexed):
    lib, photos, _w = indexed
    big = file_id(client, photos / "big.jpg")  # 1200 x 900
    shutil.rmtree(lib / "thumbnails", ignore_errors=True)
    for asked, served in ((32, 128), (64, 128), (128, 128), (200, 256), (256, 256), (300, 512), (1000, 1024)):
        response = client.get(f"/api/files/{big}/thumbnail", params={"size": asked})
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(response.content)).size) == served, asked
    small = file_id(client, photos / "p2.jpg")  # 400 x 300: a 1024 thumbnail is the photo's own size
    assert Image.open(io.BytesIO(client.get(f"/api/files/{small}/thumbnail", params={"size": 1024}).content)).size == (
        400,
        300,
    )
    assert set(cached_thumbnails(lib)) == {"128", "256", "512", "1024"}
    assert client.get(f"/api/files/{big}/thumbnail", params={"size": 1025}).status_code in (400, 422)


def test_the_thumbnail_cache_stays_under_its_limit_dropping_the_least_recently_used(indexed):
    lib, photos, weights = indexed
    names = ["p0.jpg", "p2.jpg", "p3.jpg", "p4.jpg"]
    shutil.rmtree(lib / "thumbnails", ignore_errors=True)
    with TestClient(app_over(lib, weights), base_url="http://127.0.0.1") as client:  # sizes, unbounded
        ids = {name: file_id(client, photos / name) for name in names}
        sizes = {name: len(client.get(f"/api/files/{ids[name]}/thumbnail").content) for name in names}
    shutil.rmtree(lib / "thumbnails")
    # room for p0, p3 and p4, not for p2 as well
    limit = sizes["p0.jpg"] + sizes["p3.jpg"] + sizes["p4.jpg"]
    assert limit < sum(sizes.values())
    with TestClient(app_over(lib, weights, thumbnail_cache=limit), base_url="http://127.0.0.1") as client:
        for name in ["p0.jpg", "p2.jpg", "p3.jpg", "p0.jpg", "p4.jpg"]:  # p0 used again: p2 is the oldest
            assert client.get(f"/api/files/{ids[name]}/thumbnail").status_code == 200
        kept = cached_thumbnails(lib)["256"]
        assert sum(path.stat().st_size for path in kept) <= limit and len(kept) == 3
        again = client.get(f"/api/files/{ids['p2.jpg']}/thumbnail")  # made again on demand
        assert again.status_code == 200 and len(again.content) == sizes["p2.jpg"]
        assert sum(path.stat().st_size for path in cached_thumbnails(lib)["256"]) <= limit
    with TestClient(app_over(lib, weights, thumbnail_cache=limit), base_url="http://127.0.0.1") as client:
        # a restarted server counts what is already there and keeps the order of use
        assert client.get(f"/api/files/{ids['p3.jpg']}/thumbnail").status_code == 200
        assert sum(path.stat().st_size for path in cached_thumbnails(lib)["256"]) <= limit


def test_an_index_job_makes_the_grid_thumbnails_from_the_pixels_it_decoded(tmp_path, tiny_weights, monkeypatch):
    import dreamsearch.indexer.pipeline as pipeline

    photos = make_photos(tmp_path / "photos", 4, (600, 400), seed=20)
    reads: list[str] = []
    real_read = pipeline.read_file
    monkeypatch.setattr(pipeline, "read_file", lambda path, *a: reads.append(path) or real_read(path, *a))
    with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
        started = client.post("/api/index", json={"folders": [str(photos)], "models": [MODEL]})
        assert started.status_code == 202, started.text
        assert wait_for(client, started.json()["job"])["state"] == "done"
        made = cached_thumbnails(tmp_path / "lib")
        assert list(made) == ["256"] and len(made["256"]) == 4  # before anyone asked for them
        assert sorted(reads) == sorted(str(photos / f"p{i}.jpg") for i in range(4))  # each file read once
        cached = {path.read_bytes() for path in made["256"]}
        for i in range(4):
            served = client.get(f"/api/files/{file_id(client, photos / f'p{i}.jpg')}/thumbnail")
            assert served.status_code == 200 and served.content in cached
            assert Image.open(io.BytesIO(served.content)).size == (256, 171)


# item 11: pseudo file systems, reads that never end ------------------------------------


def test_a_scan_that_follows_links_skips_proc_sys_and_dev(tmp_path):
    from dreamsearch.scan import scan

    photos = make_photos(tmp_path / "photos", 1, SIZE)
    for name in ("proc", "sys", "dev"):
        (photos / f"link-to-{name}").symlink_to(f"/{name}")
    found, errors = [], []

    def run() -> None:
        found.extend(f.relpath for f in scan(photos, follow_symlinks=True, on_error=lambda p, r: errors.append((p, r))))

    walker = threading.Thread(target=run, daemon=True)  # before the fix: blocked on /proc/kmsg
    walker.start()
    walker.join(60)
    assert not walker.is_alive(), "the scan never finished"
    assert found == ["p0.jpg"] and errors == []  # skipped as quietly as lost+found
    assert list(scan(Path("/proc"), on_error=lambda p, r: errors.append((p, r)))) == []
    assert len(errors) == 1 and errors[0][0] == "/proc" and "proc file system" in errors[0][1]


def test_indexing_a_pseudo_file_system_over_http_is_refused(tmp_path, tiny_weights):
    with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
        for folder in ("/proc", "/sys/kernel", "/dev"):
            response = client.post("/api/index", json={"folders": [folder]})
            assert response.status_code == 400 and "file system" in response.json()["detail"], response.text
        assert client.get("/api/health").json()["job"] is None


@pytest.mark.slow
def test_a_scan_read_that_never_returns_frees_the_writer_lock(tmp_path, tiny_weights, monkeypatch):
    import dreamsearch.scan as scan_module

    photos = make_photos(tmp_path / "photos", 2, SIZE)
    (photos / "notes.bin").write_bytes(b"not an image extension: its first bytes are read")
    never = threading.Event()
    monkeypatch.setattr(scan_module, "_looks_like_image", lambda path, name: never.wait())
    outcome: dict = {}

    def run() -> None:
        with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
            outcome["report"] = library.index([photos], models=[MODEL], options=IndexOptions(decode_timeout_s=1))

    runner = threading.Thread(target=run, daemon=True)
    try:
        runner.start()
        runner.join(30)
        assert not runner.is_alive(), "the run waited for the read forever"
        report = outcome["report"]
        assert any(path == str(photos) and "stopped answering" in reason for path, reason in report.failures)
        with LibraryLayout(tmp_path / "lib").writer_lock():  # free
            pass
    finally:
        never.set()


# item 12: small leaks -----------------------------------------------------------------


def test_finished_jobs_are_pruned_to_the_most_recent(tmp_path, tiny_weights, monkeypatch):
    import dreamsearch.server.jobs as jobs

    monkeypatch.setattr(jobs, "KEEP_FINISHED", 2, raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
        ids = []
        for _ in range(4):
            ids.append(client.post("/api/index", json={"folders": [str(empty)], "models": [MODEL]}).json()["job"])
            wait_for(client, ids[-1])
        assert [client.get(f"/api/jobs/{job_id}").status_code for job_id in ids] == [404, 404, 200, 200]


def test_job_ids_are_not_reused_after_a_restart(tmp_path, tiny_weights):
    empty = tmp_path / "empty"
    empty.mkdir()
    ids = []
    for _restart in range(2):
        with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
            if ids:
                assert client.get(f"/api/jobs/{ids[0]}").status_code == 404  # an old id names no new job
            ids.append(client.post("/api/index", json={"folders": [str(empty)], "models": [MODEL]}).json()["job"])
            wait_for(client, ids[-1])
    assert ids[0] != ids[1]


def test_a_json_body_over_its_cap_is_refused_before_it_is_parsed(client):
    huge = json.dumps({"vector": [0.123456789] * 120_000, "k": 1}).encode()  # 1.6 MB: under the upload cap
    assert 1024**2 < len(huge) < 2_000_000
    declared = client.post("/api/search/vector", content=huge, headers={"content-type": "application/json"})
    assert declared.status_code == 413, declared.text

    def chunks():
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    streamed = client.post("/api/search/vector", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    index = client.post(
        "/api/index", content=json.dumps({"folders": ["/x" * 700_000]}), headers={"content-type": "application/json"}
    )
    assert index.status_code == 413, index.text
    assert client.get("/api/health").json()["status"] == "ok"


def test_a_path_too_long_for_the_file_system_is_a_400(client, indexed):
    _lib, photos, _w = indexed
    long_name = "/" + "a" * 5000
    deep = "/tmp" + "/" + "/".join(["b" * 200] * 30)  # each part fits, the whole does not
    for folder in (long_name, deep, str(photos / ("c" * 300))):
        response = client.post("/api/index", json={"folders": [folder]})
        assert response.status_code == 400, (folder[:40], response.text)
        assert "long" in response.json()["detail"] and len(response.json()["detail"]) < 300  # one line, cut
    under = client.post("/api/search", files=upload(photos / "p1.jpg"), data={"under": long_name})
    assert under.status_code in (200, 400), under.text


def test_an_index_job_while_another_process_writes_is_409(client, indexed, tmp_path):
    lib, _photos, _w = indexed
    more = make_photos(tmp_path / "more", 1, SIZE, seed=70)
    with LibraryLayout(lib).writer_lock():  # what `dreamsearch index` holds while it runs
        response = client.post("/api/index", json={"folders": [str(more)], "models": [MODEL]})
        assert response.status_code == 409, response.text
        assert str(lib) not in response.json()["detail"]
    assert client.get("/api/health").json()["job"] is None


# item 13: file names that are not UTF-8 -------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_found_listed_and_served_by_id(client, indexed):
    _lib, photos, _w = indexed
    latin1 = os.fsdecode(os.fsencode(photos) + b"/" + LATIN1)
    response = client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": "3"})
    assert response.status_code == 200, response.text
    assert b"caf\\udce9.jpg" in response.content  # one JSON escape per byte, as the CLI writes it
    response.content.decode("utf-8")  # and the document is valid UTF-8
    first = response.json()["results"][0]
    assert latin1 in [first["path"], *first["also_at"]]

    duplicates = client.get("/api/duplicates", params={"max_distance": 0})
    assert duplicates.status_code == 200, duplicates.text
    (group,) = [g for g in duplicates.json()["groups"] if g["kind"] == "identical"]
    latin1_id = next(f["id"] for f in [group["keeper"], *group["others"]] if f["path"] == latin1)

    info = client.get(f"/api/files/{latin1_id}")
    assert info.status_code == 200 and os.fsencode(info.json()["path"]).endswith(b"/" + LATIN1)
    original = client.get(f"/api/files/{latin1_id}/original")
    assert original.status_code == 200 and original.content == (photos / "p1.jpg").read_bytes()
    assert client.get(f"/api/files/{latin1_id}/thumbnail").status_code == 200
    similar = client.get(f"/api/files/{file_id(client, photos / 'p2.jpg')}/similar", params={"k": 10})
    assert similar.status_code == 200 and latin1 in {
        p for r in similar.json()["results"] for p in [r["path"], *r["also_at"]]
    }

    status = client.get("/api/status", params={"failed": True})
    assert status.status_code == 200, status.text
    assert os.fsencode(photos) + b"/" + BROKEN in [os.fsencode(f["path"]) for f in status.json()["failed"]]


def test_an_index_job_over_a_folder_whose_name_is_not_utf8_is_reported(tmp_path, tiny_weights):
    folder = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")
    make_photos(Path(folder), 2, SIZE, seed=80)
    with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
        started = client.post(
            "/api/index",
            content=json.dumps({"folders": [folder], "models": [MODEL]}),
            headers={"content-type": "application/json"},
        )  # the name as \udce9, as the API writes it
        assert started.status_code == 202, started.text
        job = wait_for(client, started.json()["job"])
        assert job["state"] == "done" and job["folders"] == [folder] and job["counts"]["embedded"] == 2
        with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
            events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1]["folders"] == [folder]
        assert client.get("/api/health").status_code == 200


# item 15: stopping a job -------------------------------------------------------------


@pytest.mark.slow
def test_deleting_a_running_job_stops_it_and_it_ends_interrupted(tmp_path, tiny_weights, monkeypatch):
    import dreamsearch.indexer.pipeline as pipeline

    photos = make_photos(tmp_path / "photos", 12, (96, 64), seed=90)
    real_read = pipeline.read_file
    monkeypatch.setattr(pipeline, "read_file", lambda *a: time.sleep(0.3) or real_read(*a))  # a slow disk
    with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
        job_id = client.post("/api/index", json={"folders": [str(photos)], "models": [MODEL]}).json()["job"]
        deadline = time.monotonic() + 30
        while client.get(f"/api/jobs/{job_id}").json()["counts"]["read"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopping = client.delete(f"/api/jobs/{job_id}")
        assert stopping.status_code == 202 and stopping.json()["id"] == job_id
        job = wait_for(client, job_id)
        assert job["state"] == "interrupted" and job["counts"]["read"] < 12
        assert client.delete(f"/api/jobs/{job_id}").status_code == 200  # already over: nothing to stop
        assert client.delete("/api/jobs/nope").status_code == 404
        # the writer lock is free again: the next job runs and finishes the folder
        again = client.post("/api/index", json={"folders": [str(photos)], "models": [MODEL]})
        assert again.status_code == 202
        assert wait_for(client, again.json()["job"])["state"] == "done"
        assert client.get("/api/health").json()["vectors"] == {MODEL: 12}


@pytest.mark.browser
@pytest.mark.server
def test_the_stop_button_of_the_web_ui_stops_a_running_job(tmp_path, tiny_weights, monkeypatch):
    """In Debian's Chromium, against the app served by uvicorn in this process (so the
    disk can be made slow): Start, then Stop, and the job ends interrupted."""
    from playwright.sync_api import expect

    import dreamsearch.indexer.pipeline as pipeline
    from tests.helpers.browser import index_page

    photos = make_photos(tmp_path / "photos", 40, (96, 64), seed=120)
    real_read = pipeline.read_file
    monkeypatch.setattr(pipeline, "read_file", lambda *a: time.sleep(0.25) or real_read(*a))
    with index_page(app_over(tmp_path / "lib", tiny_weights), timeout_ms=20_000) as page:
        page.fill("#index-folders", str(photos))
        page.click("#index-start")
        expect(page.locator("#job-state")).to_have_text("Indexing…")
        page.click("#job-stop")
        expect(page.locator("#job-state")).to_have_text("Index job interrupted")
        expect(page.locator("#job-stop")).to_be_hidden()
        expect(page.locator("#index-start")).to_be_enabled()
