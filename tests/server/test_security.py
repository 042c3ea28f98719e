"""Serve hardening, security (issue 21, items 1-5 and a file deleted while it is sent):
no byte outside an indexed folder is served, a photo never runs script in the service's
origin, the API docs need no other host, index jobs stay inside the allowed folders, the
token need not be on the command line, and errors name only what the client sent.

The symlink race and the browser checks run against a real ``dreamsearch serve``
(tests/server/serving.py); the rest through FastAPI's TestClient."""

from __future__ import annotations

import io
import os
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from dreamsearch.server.app import create_app
from dreamsearch.server.security import Settings
from tests.helpers.images import photo_like
from tests.server.serving import MODEL, running_server, serve_command

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for the web -----END OPENSSH PRIVATE KEY-----\n"
#: What the polyglot's script does if it ever runs: read the API, then call home.
PAYLOAD = (
    b"<html><script>document.title='PWNED';fetch('/api/status').then(r=>r.text())"
    b".then(t=>fetch('/pwned?'+t.length))</script><!--"
)


def polyglot_jpeg() -> bytes:
    """A JPEG that is also an HTML page: a script in a comment (COM) segment."""
    buffer = io.BytesIO()
    photo_like(96, 64, 11).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    segment = b"\xff\xfe" + (len(PAYLOAD) + 2).to_bytes(2, "big") + PAYLOAD
    return jpeg[:2] + segment + jpeg[2:]


def red_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (255, 0, 0)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_weights):
    """A library of photos/ (indexed with --follow-symlinks) holding: plain photos; sub/cat.jpg
    and sub/dog.jpg (the files of the swap race); holiday.html (a JPEG/HTML polyglot); odd.jpg
    (a PPM picture named .jpg); doomed/d.jpg (deleted by one test); linked.jpg and linkdir/,
    symbolic links to a picture and a folder outside photos/. Not indexed: outside/, and
    secret/, another user's folder with a key and a private picture named as sub/'s files."""
    root = tmp_path_factory.mktemp("security")
    photos, outside = root / "photos", root / "outside"
    (photos / "sub").mkdir(parents=True)
    (photos / "doomed").mkdir()
    (outside / "dir").mkdir(parents=True)
    for i in range(3):
        photo_like(120, 90, 300 + i).save(photos / f"p{i}.jpg", quality=90)
    photo_like(120, 90, 310).save(photos / "sub" / "cat.jpg", quality=90)
    photo_like(120, 90, 315).save(photos / "sub" / "dog.jpg", quality=90)
    photo_like(120, 90, 311).save(photos / "doomed" / "d.jpg", quality=90)
    (photos / "holiday.html").write_bytes(polyglot_jpeg())
    photo_like(40, 30, 312).save(photos / "odd.jpg", "PPM")
    photo_like(120, 90, 313).save(outside / "real.jpg", quality=90)
    photo_like(120, 90, 314).save(outside / "dir" / "inner.jpg", quality=90)
    (photos / "linked.jpg").symlink_to(outside / "real.jpg")
    (photos / "linkdir").symlink_to(outside / "dir", target_is_directory=True)
    secret = root / "secret"
    secret.mkdir(mode=0o700)
    (secret / "cat.jpg").write_bytes(SECRET)
    (secret / "cat.jpg").chmod(0o600)
    (secret / "dog.jpg").write_bytes(red_jpeg())
    (secret / "dog.jpg").chmod(0o600)
    with Library.open(root / "lib", weights_dir=tiny_weights, device="cpu") as lib:
        lib.index([photos], models=[MODEL], options=IndexOptions(workers=1, follow_symlinks=True))
    return root, tiny_weights


@pytest.fixture()
def client(library):
    root, weights = library
    app = create_app(
        Library.open(root / "lib", weights_dir=weights, device="cpu"),
        [MODEL],
        Settings(allow_folders=(str(root / "allowed"),)),
    )
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client


def file_id(client: TestClient, path: Path) -> int:
    """The catalog id of an indexed file, found by a search with its own bytes."""
    found = client.post("/api/search", files={"image": ("q", path.read_bytes())}, data={"k": "20"}).json()
    for result in found["results"]:
        if result["path"] == str(path) or str(path) in result["also_at"]:
            return result["id"]
    raise AssertionError(f"{path} not found: {found}")


def ids_by_path(url: str, root: Path) -> dict[str, int]:
    with httpx.Client(base_url=url, timeout=30) as api:
        results = api.post(
            "/api/search", files={"image": ("q", (root / "photos" / "p0.jpg").read_bytes())}, data={"k": "50"}
        ).json()["results"]
    return {r["path"]: r["id"] for r in results}


# 1. Files: open first, decide on the open descriptor --------------------------------------


@pytest.fixture(scope="module")
def served(library):
    root, weights = library
    with running_server(root / "lib", weights) as url:
        yield url, root


@pytest.mark.slow
@pytest.mark.server
def test_a_folder_swapped_for_a_symlink_in_a_loop_never_serves_a_byte_from_elsewhere(served):
    """The attack of issue 21: a local user who owns an indexed folder flips sub/ between the
    real folder and a symbolic link to another user's folder, whose key and private picture
    have the names of the indexed photos, while originals and thumbnails are asked for.
    Every answer is the photo, its thumbnail, or a 404: never the key, a thumbnail of the
    private picture, or a 500; every Content-Length matches its body."""
    url, root = served
    photos = root / "photos"
    ids = ids_by_path(url, root)
    cat_id, dog_id = ids[str(photos / "sub" / "cat.jpg")], ids[str(photos / "sub" / "dog.jpg")]
    photo = (photos / "sub" / "cat.jpg").read_bytes()
    real, link, parked = photos / "sub", photos / "sub-link", photos / "sub-real"
    link.symlink_to(root / "secret", target_is_directory=True)
    stop, swaps = threading.Event(), [0]

    def swap() -> None:  # renaming a folder keeps its files' ctime: they stay "as indexed"
        while not stop.is_set():  # whole cycles only: it ends as it began
            os.rename(real, parked)
            os.rename(link, real)
            os.rename(real, link)
            os.rename(parked, real)
            swaps[0] += 1

    problems, answered = [], {"photo": 0, "thumbnail": 0, "404": 0}
    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            deadline, size = time.monotonic() + 6, 32
            while time.monotonic() < deadline:
                for route, params in ((f"{cat_id}/original", {}), (f"{dog_id}/thumbnail", {"size": size})):
                    try:
                        response = api.get(f"/api/files/{route}", params=params)
                    except httpx.TransportError as exc:  # an answer broken off half-way
                        problems.append(f"{route}: {exc!r}")
                        continue
                    length = response.headers.get("content-length")
                    if length is not None and int(length) != len(response.content):
                        problems.append(f"{route}: Content-Length {length}, body {len(response.content)}")
                    if response.status_code == 404:
                        answered["404"] += 1
                    elif response.status_code != 200:
                        problems.append(f"{route}: {response.status_code} {response.text[:200]}")
                    elif route.endswith("original"):
                        if response.content != photo:
                            problems.append(
                                f"{route}: the key"
                                if response.content == SECRET
                                else f"{route}: {response.content[:60]!r}"
                            )
                        answered["photo"] += 1
                    else:
                        red, green, _blue = np.asarray(Image.open(io.BytesIO(response.content))).mean((0, 1))
                        if red > 200 and green < 60:
                            problems.append(f"{route}: a thumbnail of the private picture")
                        answered["thumbnail"] += 1
                size = 32 + (size - 31) % 990  # a new size each time: no cached thumbnail
    finally:
        stop.set()
        swapper.join()
        link.unlink()
    assert not problems, (Counter(problem[:70] for problem in problems).most_common(8), answered)
    assert answered["photo"] and answered["thumbnail"] and answered["404"] and swaps[0] > 100, (answered, swaps)


def test_files_indexed_through_followed_symlinks_are_served(client, library):
    root, _weights = library
    for path, target in (
        (root / "photos" / "linked.jpg", root / "outside" / "real.jpg"),
        (root / "photos" / "linkdir" / "inner.jpg", root / "outside" / "dir" / "inner.jpg"),
    ):
        found = file_id(client, path)
        original = client.get(f"/api/files/{found}/original")
        assert original.status_code == 200 and original.content == target.read_bytes(), (path, original.text)
        thumbnail = client.get(f"/api/files/{found}/thumbnail", params={"size": 64})
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"


def test_a_file_deleted_between_the_check_and_the_send_is_a_404_not_a_500(library):
    """The file is as indexed when the library checks it, and gone when it is sent (its
    folder renamed away, which keeps the file's ctime, so it can come back as indexed)."""
    root, weights = library
    folder = root / "photos" / "doomed"
    library_object = Library.open(root / "lib", weights_dir=weights, device="cpu")
    checked = library_object.file

    def check_then_delete(file_id: int):
        answer = checked(file_id)
        if answer[0].path == str(folder / "d.jpg"):
            os.rename(folder, folder.with_name("away"))
        return answer

    library_object.file = check_then_delete
    app = create_app(library_object, [MODEL])
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        doomed_id = file_id(client, folder / "d.jpg")
        for route in ("original", "thumbnail"):
            try:
                response = client.get(f"/api/files/{doomed_id}/{route}")
            finally:
                os.rename(folder.with_name("away"), folder)
            assert response.status_code == 404, (route, response.status_code, response.text)
            assert isinstance(response.json()["detail"], str)


# 2. No script from a photo ---------------------------------------------------------------


def test_an_original_gets_its_content_type_from_the_decoded_format_never_from_its_name(client, library):
    root, _weights = library
    polyglot = client.get(f"/api/files/{file_id(client, root / 'photos' / 'holiday.html')}/original")
    assert polyglot.status_code == 200 and polyglot.content == (root / "photos" / "holiday.html").read_bytes()
    assert polyglot.headers["content-type"] == "image/jpeg"
    assert polyglot.headers["x-content-type-options"] == "nosniff"
    assert re.search(r"(^|;)\s*sandbox\s*(;|$)", polyglot.headers["content-security-policy"])
    assert polyglot.headers["content-disposition"].startswith("inline")
    odd = client.get(f"/api/files/{file_id(client, root / 'photos' / 'odd.jpg')}/original")  # PPM: no browser type
    assert odd.status_code == 200 and odd.headers["content-type"] == "application/octet-stream"
    assert odd.headers["content-disposition"].startswith("attachment")


def test_every_response_says_nosniff_and_the_ui_and_api_forbid_inline_script_and_framing(library):
    root, weights = library
    library_object = Library.open(root / "lib", weights_dir=weights, device="cpu")
    library_object.status = lambda *_a: (_ for _ in ()).throw(RuntimeError(f"{root}/lib/secret.cpp:12 boom"))
    app = create_app(library_object, [MODEL], Settings(token="t0ken", max_body=1000))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as guarded:
        bearer = {"Authorization": "Bearer t0ken"}
        responses = {
            "ui": guarded.get("/"),
            "script": guarded.get("/static/app.js"),
            "schema": guarded.get("/openapi.json"),
            "api": guarded.get("/api/health", headers=bearer),
            "404": guarded.get("/api/files/999999", headers=bearer),
            "401": guarded.get("/api/health"),
            "400 Host": guarded.get("/api/health", headers={"Host": "evil.example"}),
            "413": guarded.post("/api/search", content=b"x" * 2000, headers=bearer),
            "422": guarded.get("/api/files/abc", headers=bearer),
            "500": guarded.get("/api/status", headers=bearer),
        }
    for name, response in responses.items():
        assert response.headers.get("x-content-type-options") == "nosniff", name
        policy = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, (name, policy)
        assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0], (name, policy)
        assert response.headers.get("x-frame-options") == "DENY", name
    failed = responses["500"]
    assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
    assert str(root) not in failed.text and ".cpp" not in failed.text and "\n" not in failed.json()["detail"]


# 3. /docs from the package ---------------------------------------------------------------


def test_the_api_docs_page_loads_its_assets_from_this_server_only(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    sources = [s for s in re.findall(r'(?:src|href)="([^"]+)"', page.text) if not s.startswith("data:")]
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    assert "<script>" not in page.text.replace(" ", "")  # no inline script: the CSP forbids it
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 100, source


# 4. Allowed folders and the token file ---------------------------------------------------


def test_index_jobs_are_refused_outside_the_indexed_and_allowed_folders(client, library, tmp_path):
    root, _weights = library
    other_user = tmp_path / "home" / "bob" / "Pictures"
    other_user.mkdir(parents=True)
    photo_like(50, 40, 1).save(other_user / "b.jpg")
    (root / "photos" / "sneaky").symlink_to(other_user, target_is_directory=True)
    try:
        for folder in (other_user, root / "photos" / "sneaky", Path("/etc")):
            refused = client.post("/api/index", json={"folders": [str(folder)]})
            assert refused.status_code == 403, (folder, refused.status_code, refused.text)
            assert "--allow-folder" in refused.json()["detail"]
        assert client.get("/api/health").json()["job"] is None
        allowed = root / "allowed" / "2024"  # under an --allow-folder
        allowed.mkdir(parents=True, exist_ok=True)
        for folder in (allowed, root / "photos" / "sub"):  # and under an indexed folder
            started = client.post("/api/index", json={"folders": [str(folder)]})
            assert started.status_code == 202, started.text
            wait_for_job(client, started.json()["job"])
    finally:
        (root / "photos" / "sneaky").unlink()


def wait_for_job(client: TestClient, job: str) -> dict:
    deadline = time.monotonic() + 60
    while (state := client.get(f"/api/jobs/{job}").json())["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    return state


@pytest.mark.server
def test_the_token_can_come_from_a_file_that_only_its_owner_can_read(library, tmp_path):
    root, weights = library
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-4711\n")
    token_file.chmod(0o644)
    refused = subprocess.run(
        serve_command(root / "lib", weights, "--token-file", str(token_file)),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert (
        refused.returncode != 0 and "--token-file" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    )
    token_file.chmod(0o600)
    allowed = tmp_path / "incoming"
    allowed.mkdir()
    with running_server(
        root / "lib",
        weights,
        "--token-file",
        str(token_file),
        "--allow-folder",
        str(allowed),
        env={"DREAMSEARCH_TOKEN": ""},
    ) as url:
        assert httpx.get(url + "/api/health").status_code == 401
        good = {"Authorization": "Bearer from-a-file-4711"}
        assert httpx.get(url + "/api/health", headers=good).status_code == 200
        started = httpx.post(url + "/api/index", json={"folders": [str(allowed)]}, headers=good)
        assert started.status_code == 202, started.text
        refused_job = httpx.post(url + "/api/index", json={"folders": [str(tmp_path)]}, headers=good)
        assert refused_job.status_code == 403


# 5. Errors name only what the client sent ------------------------------------------------


def test_http_errors_do_not_name_the_weights_folder_the_library_or_faiss_sources(client, library, monkeypatch):
    root, weights = library
    photo = (root / "photos" / "p0.jpg").read_bytes()
    for model in ("clip", "dreamsim"):  # known models whose weights this server lacks
        response = client.post("/api/embed", files={"image": ("q.jpg", photo)}, data={"model": model})
        assert 400 <= response.status_code < 500, response.text
        assert str(weights) not in response.text and "--weights-dir" not in response.text, response.text

    import faiss

    def full_disk(*_args):
        raise RuntimeError(
            "Error in void faiss::write_index(const Index*, IOWriter*, int) at "
            "/project/faiss/faiss/impl/index_write.cpp:1069: Error: 'ret == (size)' failed: "
            "write error: No space left on device"
        )

    monkeypatch.setattr(faiss, "write_index", full_disk)
    fresh = root / "allowed" / "fresh"
    fresh.mkdir(parents=True, exist_ok=True)
    photo_like(60, 40, 77).save(fresh / "f.jpg")
    started = client.post("/api/index", json={"folders": [str(fresh)]})
    assert started.status_code == 202, started.text
    job = wait_for_job(client, started.json()["job"])
    assert job["state"] == "failed" and job["error"], job
    assert str(root / "lib") not in job["error"] and ".cpp" not in job["error"] and "faiss::" not in job["error"], job


# The browser: a polyglot never runs, the UI and /docs work under the policy ---------------


CSP_LOG = """document.addEventListener('securitypolicyviolation',
    e => (window.__violations = window.__violations || []).push(e.violatedDirective + ' ' + e.blockedURI));"""


@pytest.mark.browser
@pytest.mark.server
def test_in_chromium_a_polyglot_photo_runs_no_script_and_the_ui_and_docs_break_no_policy(served):
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers.browser import CHROMIUM_ARGS, chromium

    url, root = served
    polyglot_id = ids_by_path(url, root)[str(root / "photos" / "holiday.html")]
    original = f"{url}/api/files/{polyglot_id}/original"
    called_home, elsewhere = [], []
    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.add_init_script(CSP_LOG)
            context.on("request", lambda r: called_home.append(r.url) if "/pwned" in r.url else None)

            def only_this_server(route):
                if route.request.url.startswith(url) or route.request.url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            context.route("**/*", only_this_server)
            page = context.new_page()

            page.goto(original)  # opened directly: shown as the picture it is
            assert page.title() != "PWNED"
            assert page.evaluate("document.images.length && document.images[0].naturalWidth") == 96
            page.goto("about:blank")
            page.set_content(f'<iframe src="{original}"></iframe>')  # framed by another page
            page.wait_for_timeout(1000)

            page.goto(url + "/")  # the UI's Open button on the polyglot's tile
            page.set_input_files("#search-file", str(root / "photos" / "holiday.html"))
            tile = page.locator("#results .tile").first
            expect(tile.locator(".name")).to_have_text("holiday.html")
            with context.expect_page() as opened:
                tile.locator("button.open").click()
            opened.value.wait_for_load_state()
            assert opened.value.title() != "PWNED"
            page.wait_for_timeout(1000)
            assert not page.evaluate("window.__violations || []")

            page.goto(url + "/docs")  # Swagger UI from the package, under the same policy
            expect(page.locator(".opblock").first).to_be_visible()
            assert page.locator(".opblock").count() >= 10
            assert not page.evaluate("window.__violations || []")
        finally:
            browser.close()
    assert not called_home, called_home
    assert not elsewhere, elsewhere
