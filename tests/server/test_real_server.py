"""``dreamsearch serve`` as a user starts it: a real uvicorn process on a free loopback
port, talked to with httpx (only loopback addresses are contacted)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from tests.helpers.images import make_photos
from tests.server.serving import MODEL, running_server

pytestmark = pytest.mark.server


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("real")
    photos = make_photos(root / "photos", 6)
    with Library.open(root / "lib", weights_dir=tiny_weights, device="cpu") as lib:
        lib.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    return root / "lib", photos, tiny_weights


@pytest.mark.slow
def test_it_prints_its_url_and_binds_loopback_only(library):
    lib, photos, weights = library
    with running_server(lib, weights) as url:
        port = int(url.rsplit(":", 1)[1])
        assert url.startswith("http://127.0.0.1:")
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
        health = httpx.get(url + "/api/health").json()
        assert health["models_loaded"] == [MODEL] and health["vectors"] == {MODEL: 6}
        rebinding = httpx.get(url + "/api/health", headers={"Host": "evil.example:80"})
        assert rebinding.status_code == 400 and "Host" in rebinding.json()["detail"]
        assert (
            "access-control-allow-origin"
            not in httpx.get(url + "/api/health", headers={"Origin": "http://evil.example"}).headers
        )


def test_a_non_loopback_host_needs_a_token(library):
    lib, _photos, weights = library
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamsearch",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--library",
            str(lib),
            "--weights-dir",
            str(weights),
            "--models",
            MODEL,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DREAMSEARCH_TOKEN": ""},
    )
    assert refused.returncode == 1 and "--token" in refused.stderr and "0.0.0.0" in refused.stderr


def test_with_a_token_every_api_route_needs_it(library):
    lib, photos, weights = library
    with running_server(lib, weights, env={"DREAMSEARCH_TOKEN": "s3cret-token"}) as url:
        assert httpx.get(url + "/api/health").status_code == 401
        assert httpx.get(url + "/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/api/files/1/original").status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(url + "/api/health", headers=good).status_code == 200
        assert httpx.get(url + "/").status_code == 200  # the page itself asks for the token


def test_searches_stay_correct_while_an_index_job_adds_and_removes_files(library, tmp_path):
    lib, photos, weights = library
    incoming = make_photos(tmp_path / "incoming", 8, seed=200)
    problems, answered, done, deleted_at = [], [], threading.Event(), [float("inf")]
    query = (photos / "p1.jpg").read_bytes()

    def search_loop() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not done.is_set():
                began = time.monotonic()
                response = client.post("/api/search", files={"image": ("q.jpg", query)}, data={"k": "20"})
                if response.status_code >= 500 or response.status_code != 200:
                    problems.append(f"{response.status_code}: {response.text}")
                    continue
                results = response.json()["results"]
                if began > deleted_at[0]:  # started after the deletion: must not name a deleted file
                    problems.extend(r["path"] for r in results if not os.path.exists(r["path"]))
                answered.append(began)
                if results:
                    similar = client.get(f"/api/files/{results[0]['id']}/similar", params={"k": 5})
                    if similar.status_code >= 500:
                        problems.append(f"{similar.status_code}: {similar.text}")

    def run_job(client: httpx.Client) -> dict:
        job = client.post("/api/index", json={"folders": [str(incoming)]}).json()["job"]
        while (state := client.get(f"/api/jobs/{job}").json())["state"] == "running":
            time.sleep(0.1)
        return state

    threads = [threading.Thread(target=search_loop) for _ in range(3)]
    with (
        running_server(lib, weights, "--allow-folder", str(incoming)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        for thread in threads:
            thread.start()
        try:
            added = run_job(client)
            assert added["state"] == "done" and added["counts"]["embedded"] == 8
            for name in ("p1.jpg", "p4.jpg", "p6.jpg"):
                (incoming / name).unlink()
            deleted_at[0] = time.monotonic()
            removed = run_job(client)
            assert removed["state"] == "done" and removed["counts"]["removed"] == 3
            found = client.post(
                "/api/search", files={"image": ("q.jpg", (incoming / "p3.jpg").read_bytes())}, data={"k": "1"}
            ).json()["results"]
            assert found[0]["path"] == str(incoming / "p3.jpg")
        finally:
            done.set()
            for thread in threads:
                thread.join(60)
    assert not problems, problems[:5]
    assert len(answered) >= 6 and any(began > deleted_at[0] for began in answered)  # the loops really ran
