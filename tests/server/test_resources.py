"""Bounded resources (issue 21, items 6-9 and four of 15): what an upload may cost, what
happens past the server's slots, connections and models, and that a slow or busy part
never stalls the others. Only 127.0.0.1 is contacted."""

from __future__ import annotations

import io
import queue
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import dreamsearch.api
import dreamsearch.search
from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from dreamsearch.search import Searcher
from dreamsearch.server.app import create_app
from tests.helpers.backends import with_saved_graphs
from tests.helpers.http_api import upload
from tests.helpers.images import make_photos
from tests.helpers.official_layout import write_tiny_cache
from tests.server.serving import running_server

DINO, CLIP = "dreamsim-dino", "dreamsim-clip"
#: How long a test waits for something that must happen at once (it hangs otherwise).
PROMPTLY = 20


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A library indexed with tiny dreamsim-dino and dreamsim-clip."""
    root = tmp_path_factory.mktemp("resources")
    weights = with_saved_graphs(write_tiny_cache(root / "weights", "dino_vitb16"), DINO)  # for its servers
    write_tiny_cache(weights, "clip_vitb32", seed=1)
    photos = make_photos(root / "photos", 6)
    with Library.open(root / "lib", weights_dir=weights, device="cpu") as library:
        library.index([photos], models=[DINO, CLIP], options=IndexOptions(workers=1))
    return root / "lib", photos, weights


def open_library(two_models, **options) -> Library:
    lib, _photos, weights = two_models
    return Library.open(lib, weights_dir=weights, device="cpu", **options)


def Limits(**fields):
    """The server's limits, imported here so that the rest of this file also runs against
    the code from before them (to see each test fail there)."""
    from dreamsearch.server.limits import Limits

    return Limits(**fields)


@contextmanager
def client_of(library: Library, models=(DINO,), **options):
    with TestClient(create_app(library, list(models), **options), base_url="http://127.0.0.1") as client:
        yield client


def in_thread(function, *args, **kwargs) -> queue.Queue:
    """Run ``function(*args, **kwargs)`` in a daemon thread; its result (or exception)
    lands in the queue."""
    answer: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            answer.put(function(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            answer.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return answer


def promptly(answer: queue.Queue):
    try:
        result = answer.get(timeout=PROMPTLY)
    except queue.Empty:
        raise AssertionError(f"no answer within {PROMPTLY} s: it waited for the slow or busy work") from None
    if isinstance(result, BaseException):
        raise result
    return result


def png(width: int, height: int, mode: str = "1") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


# 6. what an upload may cost -------------------------------------------------------------


def test_an_upload_over_the_servers_pixel_limit_gets_413_before_it_is_decoded(two_models, monkeypatch):
    """A 8000x8000 1-bit PNG is a few KB and under the library's 200 MP limit; decoded as
    RGB it takes 256 MB. The server's own limit (50 MP by default) refuses it first."""
    big, decoded = png(8000, 8000), []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    with client_of(open_library(two_models)) as client:
        response = client.post("/api/search", files=upload(big, "big.png"))
        assert response.status_code == 413, response.text
        assert "big.png" in response.json()["detail"] and "50,000,000" in response.json()["detail"]
        assert (8000, 8000) not in decoded
        small = client.post("/api/embed", files=upload(png(1200, 1000), "small.png"))
        assert small.status_code == 200
    with client_of(open_library(two_models), limits=Limits(max_upload_pixels=1_000_000)) as client:
        response = client.post("/api/embed", files=upload(png(1200, 1000), "small.png"))
        assert response.status_code == 413 and "1,000,000" in response.json()["detail"]


def test_uploads_past_the_slots_and_the_queue_get_503_with_retry_after(two_models, monkeypatch):
    """One slot, one place in the queue: of four uploads at once, one decodes, one waits
    and two are told to come back; the two that were taken in then succeed."""
    library = open_library(two_models)
    release, started = threading.Event(), threading.Semaphore(0)
    real = Library.query

    def held_query(self, *args, **kwargs):
        started.release()
        release.wait(PROMPTLY)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Library, "query", held_query)
    _lib, photos, _w = two_models
    with (
        client_of(library, limits=Limits(heavy_slots=1, queue=1, wait_s=PROMPTLY)) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        first = pool.submit(client.post, "/api/search", files=upload(photos / "p1.jpg"), data={"k": "2"})
        assert started.acquire(timeout=PROMPTLY)
        second = pool.submit(client.post, "/api/search", files=upload(photos / "p2.jpg"), data={"k": "2"})
        time.sleep(0.5)  # let it reach the queue
        refused = [client.post("/api/search", files=upload(photos / "p3.jpg")) for _ in range(2)]
        release.set()
        answers = [first.result(PROMPTLY), second.result(PROMPTLY)]
    for response in refused:
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1 and "busy" in response.json()["detail"]
    assert [a.status_code for a in answers] == [200, 200]


def test_an_upload_that_decodes_too_long_is_answered_at_the_time_limit(two_models, monkeypatch):
    """The decode goes on in its thread (keeping its slot) but the client hears at once."""
    release = threading.Event()
    real = dreamsearch.search.decode_bytes

    def slow_decode(*args, **kwargs):
        release.wait(PROMPTLY)
        return real(*args, **kwargs)

    monkeypatch.setattr(dreamsearch.search, "decode_bytes", slow_decode)
    _lib, photos, _w = two_models
    try:
        with client_of(open_library(two_models), limits=Limits(upload_time_limit_s=0.5)) as client:
            answer = in_thread(client.post, "/api/embed", files=upload(photos / "p1.jpg", "slow.jpg"))
            response = promptly(answer)
    finally:
        release.set()
    assert response.status_code == 415, response.text
    assert "slow.jpg" in response.json()["detail"] and "longer than 0.5 s" in response.json()["detail"]


# 8. heavy routes do not starve light ones ------------------------------------------------


def test_light_routes_answer_while_64_heavy_requests_of_each_kind_are_stuck(two_models, monkeypatch):
    """64 thumbnails, 64 searches by id and 64 uploads that cannot finish (FastAPI's shared
    pool has 40 threads): health, status and file metadata still answer."""
    import dreamsearch.server.app as app_module

    library = open_library(two_models)
    release = threading.Event()

    def stuck(real):
        def wait_then(*args, **kwargs):
            release.wait(60)
            return real(*args, **kwargs)

        return wait_then

    _lib, photos, _w = two_models
    with client_of(library) as client:
        file_id = client.post("/api/search", files=upload(photos / "p1.jpg"), data={"k": "1"}).json()["results"][0][
            "id"
        ]
        monkeypatch.setattr(Library, "query", stuck(Library.query))
        monkeypatch.setattr(app_module, "thumbnail", stuck(app_module.thumbnail))
        with ThreadPoolExecutor(192) as pool:
            heavy = [pool.submit(client.get, f"/api/files/{file_id}/thumbnail") for _ in range(64)]
            heavy += [pool.submit(client.get, f"/api/files/{file_id}/similar", params={"k": 2}) for _ in range(64)]
            heavy += [pool.submit(client.post, "/api/search", files=upload(photos / "p2.jpg")) for _ in range(64)]
            time.sleep(1.0)  # let them all take their threads
            try:
                for path in ("/api/health", "/api/status", f"/api/files/{file_id}"):
                    assert promptly(in_thread(client.get, path)).status_code == 200, path
            finally:
                release.set()
            statuses = {future.result(60).status_code for future in heavy}
    assert statuses <= {200, 503}


def test_status_reads_neither_every_index_byte_nor_folders_that_are_not_the_librarys(two_models, tmp_path):
    """``/api/status`` took 1.5 s on a 100k library: it hashed the whole saved index and
    walked every file under the library folder (photos a user keeps there included). It
    now checks the index quickly, counts the thumbnail cache from its tally and counts only
    dreamsearch's own files; ``dreamsearch status`` still hashes every byte."""
    import shutil

    lib, _photos, weights = two_models
    copy = tmp_path / "lib"
    shutil.copytree(lib, copy)
    (copy / "my photos").mkdir()
    (copy / "my photos" / "big.raw").write_bytes(b"x" * 5_000_000)
    with Library.open(copy, weights_dir=weights, device="cpu") as library, client_of(library) as client:
        assert all("checksum ok" in m.index for m in library.status().models)
        client.get(f"/api/files/{client.get('/api/files/1').json()['id']}/thumbnail")  # one thumbnail cached
        thumbnails = sum(p.stat().st_size for p in (copy / "thumbnails").rglob("*.jpg"))
        report = client.get("/api/status").json()
        walked = library.status().size_bytes  # the CLI's way: thumbnails walked, not tallied
    assert thumbnails > 0 and report["size_bytes"] == walked < 5_000_000
    assert [m["index"].split(", ")[1].split(" (")[0] for m in report["models"]] == ["size and edge digests ok"] * 2


# 9. models the operator did not choose ------------------------------------------------------


def test_a_model_not_in_models_is_refused_and_not_loaded(two_models):
    library = open_library(two_models)
    _lib, photos, _w = two_models
    with client_of(library) as client:
        for response in (
            client.post("/api/embed", files=upload(photos / "p1.jpg"), data={"model": CLIP}),
            client.post("/api/search", files=upload(photos / "p1.jpg"), data={"model": CLIP}),
            client.post("/api/compare", files=upload(photos / "p1.jpg"), data={"models": f"{DINO},{CLIP}"}),
            client.get("/api/duplicates", params={"model": CLIP}),
            client.post("/api/index", json={"folders": [str(photos)], "models": [CLIP]}),
        ):
            assert response.status_code == 400, response.text
            assert CLIP in response.json()["detail"] and "--load-models-on-request" in response.json()["detail"]
        assert client.get("/api/health").json()["models_loaded"] == [DINO]


def test_models_loaded_on_request_are_kept_at_most_max_loaded_models_least_recently_used_first(two_models):
    library = open_library(two_models, max_loaded_models=1)
    _lib, photos, _w = two_models
    with client_of(library, limits=Limits(load_models_on_request=True)) as client:
        assert client.get("/api/health").json()["models_loaded"] == [DINO]
        for model in (CLIP, DINO, CLIP):
            response = client.post("/api/embed", files=upload(photos / "p1.jpg"), data={"model": model})
            assert response.status_code == 200 and response.json()["model"] == model
            assert client.get("/api/health").json()["models_loaded"] == [model]


# 15. one lock per model; models in use stay --------------------------------------------------


def test_a_slow_model_load_or_index_open_does_not_stall_other_requests(two_models, monkeypatch):
    """A weights download or a large index opening for one model used to hold the one
    library lock: every other request waited, health included."""
    library = open_library(two_models)
    _lib, photos, _w = two_models
    library.embedder(DINO)
    release = threading.Event()
    real_pending, real_searcher = dreamsearch.api.PendingModel, dreamsearch.api.Searcher

    def slow_for_clip(real):
        def build(*args, **kwargs):
            if CLIP in args or CLIP in kwargs.values():
                release.wait(60)
            return real(*args, **kwargs)

        return build

    monkeypatch.setattr(dreamsearch.api, "PendingModel", slow_for_clip(real_pending))
    monkeypatch.setattr(dreamsearch.api, "Searcher", slow_for_clip(real_searcher))
    try:
        loading = in_thread(library.embedder, CLIP)
        opening = in_thread(library.query, like=photos / "p1.jpg", model=CLIP)
        time.sleep(0.3)
        assert promptly(in_thread(library.loaded_models)) == [DINO]
        query = promptly(in_thread(library.query, (photos / "p2.jpg").read_bytes(), model=DINO))
        assert promptly(in_thread(library.search, query, k=1, include_self=True)).matches[0].path == str(
            photos / "p2.jpg"
        )
        assert promptly(in_thread(library.file, 1))[0].id == 1
    finally:
        release.set()
    promptly(loading), promptly(opening)
    assert library.loaded_models() == [CLIP, DINO]


@pytest.mark.slow
def test_idle_unloading_waits_for_requests_in_flight_and_empties_the_cuda_cache(two_models, monkeypatch):
    import torch

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    inside, release = threading.Event(), threading.Event()
    real = Searcher.embed_pixels

    def held(self, embedder, pixels):
        inside.set()
        release.wait(PROMPTLY)
        return real(self, embedder, pixels)

    monkeypatch.setattr(Searcher, "embed_pixels", held)
    _lib, photos, _w = two_models
    with client_of(open_library(two_models), unload_after=1) as client:
        answer = in_thread(client.post, "/api/search", files=upload(photos / "p1.jpg"), data={"k": "1"})
        assert inside.wait(PROMPTLY)
        time.sleep(2.5)  # the unloader looks every second; the model has been in use all along
        try:
            assert client.get("/api/health").json()["models_loaded"] == [DINO]
        finally:
            release.set()
        assert promptly(answer).status_code == 200
        deadline = time.monotonic() + PROMPTLY
        while not emptied and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/api/health").json()["models_loaded"] == [] and emptied


def test_compare_that_lets_its_models_go_keeps_one_another_caller_loaded_meanwhile(two_models, monkeypatch):
    library = open_library(two_models)
    _lib, photos, _w = two_models
    inside, release = threading.Event(), threading.Event()
    real = Searcher.embed_pixels

    def held_for_clip(self, embedder, pixels):
        if self.info.name == CLIP and not release.is_set():
            inside.set()
            release.wait(PROMPTLY)
        return real(self, embedder, pixels)

    monkeypatch.setattr(Searcher, "embed_pixels", held_for_clip)
    comparing = in_thread(
        lambda: library.compare((photos / "p1.jpg").read_bytes(), [DINO, CLIP], k=2, keep_models=False)
    )
    assert inside.wait(PROMPTLY)
    library.embedder(CLIP)  # another caller wants it kept
    release.set()
    promptly(comparing)
    assert library.loaded_models() == [CLIP]  # dino was loaded by compare alone: let go


# 7. connections: half-sent requests and the descriptor limit -----------------------------------


@contextmanager
def served(two_models, *options: str, open_files: int | None = None):
    """``dreamsearch serve`` in a subprocess (optionally under ``ulimit -n``); yields its
    URL and its output lines so far."""
    lib, _photos, weights = two_models

    def limit() -> None:
        if open_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    output: list[str] = []
    with running_server(lib, weights, *options, preexec_fn=limit, log=output) as url:
        yield url, output


def closed_by_server(connection: socket.socket) -> bool:
    connection.settimeout(PROMPTLY)
    try:
        while connection.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
@pytest.mark.server
def test_half_sent_requests_are_closed_after_the_request_timeout(two_models):
    with served(two_models, "--request-timeout", "1") as (url, _output):
        port = int(url.rsplit(":", 1)[1])
        headers = socket.create_connection(("127.0.0.1", port))
        headers.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(
            b"POST /api/search/vector HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"vector": ['
        )
        kept_alive = socket.create_connection(("127.0.0.1", port))
        kept_alive.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200")
        kept_alive.sendall(b"G")  # the next request, started and never finished
        assert all(closed_by_server(c) for c in (headers, body, kept_alive))
        assert httpx.get(url + "/api/health").status_code == 200


@pytest.mark.slow
@pytest.mark.server
def test_past_the_descriptor_limit_health_still_answers_and_the_log_stays_short(two_models):
    """300 slow connections against ``ulimit -n 256``: before, accept failed with EMFILE,
    health never answered and the log grew by a traceback per failed accept."""
    with served(two_models, open_files=256) as (url, output):
        port = int(url.rsplit(":", 1)[1])
        slow = []
        for _ in range(300):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(b"G")
            slow.append(connection)
        time.sleep(1)
        answers = [httpx.get(url + "/api/health", timeout=PROMPTLY).status_code for _ in range(5)]
        assert answers == [200] * 5
        log = "".join(output)
        assert log.count("Traceback") <= 2 and len(output) < 40, log[-3000:]
        for connection in slow:
            connection.close()
