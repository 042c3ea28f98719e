"""``dreamsearch serve --watch``: a real server following its indexed folder; a photo
dropped in is announced on ``/api/events``, shown in ``/api/health`` and found by upload
with no restart."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from tests.helpers.images import make_photos, photo_like
from tests.server.serving import MODEL, running_server
from tests.test_watch import wait_for


@pytest.mark.slow
@pytest.mark.server
def test_a_photo_dropped_in_is_announced_and_found_without_a_restart(tmp_path, tiny_weights):
    photos = make_photos(tmp_path / "photos", 3)
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    events: list[dict] = []
    with running_server(tmp_path / "lib", tiny_weights, "--watch", "--settle", "0.3") as url:
        wait_for(lambda: httpx.get(url + "/api/health").json()["watch"]["batches"] >= 1, 30, "the catch-up")

        def listen() -> None:
            with httpx.stream("GET", url + "/api/events?after=1", timeout=None) as stream:
                for line in stream.iter_lines():  # the warnings first (none), then the batch
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) == 2:
                            return

        threading.Thread(target=listen, daemon=True).start()
        photo_like(200, 150, 99).save(photos / "new.jpg", quality=90)
        wait_for(lambda: len(events) == 2, what="the batch announced")
        assert events[0] == [] and events[1]["added"] == 1 and events[1]["seq"] == 2
        watch = httpx.get(url + "/api/health").json()["watch"]
        assert watch["last_batch"]["added"] == 1 and watch["warnings"] == []
        assert watch["folders"] == [{"path": str(photos), "mode": "events (inotify)", "present": True}]
        with (photos / "new.jpg").open("rb") as picture:
            found = httpx.post(url + "/api/search", files={"image": ("q.jpg", picture)}, data={"k": "1"}).json()
        assert found["results"][0]["path"] == str(photos / "new.jpg")


def test_events_are_404_when_the_server_does_not_watch(tmp_path, tiny_weights):
    from fastapi.testclient import TestClient

    from tests.helpers.http_api import app_over

    photos = make_photos(tmp_path / "photos", 1)
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
        assert client.get("/api/health").json()["watch"] is None
        answer = client.get("/api/events")
        assert answer.status_code == 404 and "--watch" in answer.json()["detail"]


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.browser
def test_the_web_ui_shows_new_photos_and_refreshes_its_results_when_asked(tmp_path, tiny_weights):
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers.browser import CHROMIUM_ARGS, chromium

    executable = chromium()
    photos = make_photos(tmp_path / "photos", 3)
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    expect.set_options(timeout=15_000)
    with running_server(tmp_path / "lib", tiny_weights, "--watch", "--settle", "0.3") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(url + "/")
            page.set_input_files("#search-file", str(photos / "p0.jpg"))
            expect(page.locator("#results .tile")).to_have_count(3)
            for i in (10, 11):
                photo_like(200, 150, i).save(photos / f"new{i}.jpg", quality=90)
            expect(page.locator("#new-photos")).to_have_text("2 new photos · refresh")
            expect(page.locator("#results .tile")).to_have_count(3)  # nothing moves under the user's eyes
            page.locator("#new-photos").click()
            expect(page.locator("#results .tile")).to_have_count(5)
            expect(page.locator("#new-photos")).to_be_hidden()
            expect(page.locator("#pill")).to_have_text(f"5 vectors · {MODEL}")
            expect(page.locator("#watch-warnings")).to_be_hidden()
            photos.rename(tmp_path / "unplugged")  # told as it happens, and in the Status tab
            expect(page.locator("#watch-warnings")).to_contain_text(f"watched folder {photos} is missing")
            page.goto(url + "/#status")
            expect(page.locator("#status-body .watch-warnings")).to_contain_text(f"{photos} is missing")
            assert page_errors == []
        finally:
            browser.close()
