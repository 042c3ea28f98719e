"""The web UI in a real browser: Debian's Chromium, driven by Playwright, against
``dreamsearch serve`` run as a subprocess on a small library indexed with the tiny
DreamSim-DINO. Skipped where Chromium is missing, unless DREAMSEARCH_REQUIRE_BROWSER=1."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from tests.helpers.browser import CHROMIUM_ARGS, chromium
from tests.helpers.images import photo_like
from tests.server.serving import MODEL, running_server

pytestmark = [pytest.mark.browser, pytest.mark.server]

ALL_THUMBNAILS_DECODED = """sel => {
    const imgs = [...document.querySelectorAll(sel)];
    return imgs.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0);
}"""


FILES_ON_PAGE = """() => [...document.querySelectorAll('#results .tile')].map(t => ({
    id: Number(t.querySelector('.thumb img').src.match(/files\\/(\\d+)\\//)[1]),
    path: t.querySelector('.name').title,
}))"""


def boxes(locator) -> list[dict]:
    return [locator.nth(i).bounding_box() for i in range(locator.count())]


@pytest.fixture(scope="module")
def executable() -> str:
    return chromium()


@pytest.fixture(scope="module")
def served(executable, tmp_path_factory, tiny_weights):  # executable first: skip before building anything
    """A running server: (its URL, the photo folder, Chromium). Eight photos, plus a byte copy
    of p0.jpg in a subfolder (an "also at" path and an identical-duplicates group)."""
    root = tmp_path_factory.mktemp("browser")
    photos = root / "photos"
    (photos / "copy").mkdir(parents=True)
    for i in range(8):
        photo_like(220, 160, 40 + i).save(photos / f"p{i}.jpg", quality=90)
    (photos / "copy" / "p0.jpg").write_bytes((photos / "p0.jpg").read_bytes())
    with Library.open(root / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))

    with running_server(root / "lib", tiny_weights) as url:
        yield url, photos, executable


def test_the_web_ui_against_a_real_server(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, photos, executable = served
    screenshot = tmp_path / "ui.png"
    extra = os.environ.get("DREAMSEARCH_SCREENSHOT")
    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(url + "/")
            expect(page.locator("#pill")).to_have_text(re.compile(rf"^8 vectors · {MODEL}$"))
            expect(page.locator("#model option")).to_have_text([MODEL])

            # Search by upload: the photo itself first, its copy noted, thumbnails decoded.
            page.set_input_files("#search-file", str(photos / "p3.jpg"))
            tiles = page.locator("#results .tile")
            expect(page.locator("#search-sub")).to_have_text(f"8 results · {MODEL}")
            expect(tiles).to_have_count(8)
            expect(tiles.first.locator(".name")).to_have_text("p3.jpg")
            expect(tiles.first.locator(".name")).to_have_attribute("title", str(photos / "p3.jpg"))
            expect(tiles.first.locator(".dist")).to_have_text("0.0000")
            expect(page.locator("#results .copies")).to_have_text(["+1 copy"])
            page.wait_for_function(ALL_THUMBNAILS_DECODED, arg="#results .tile img")
            assert page.evaluate("() => document.querySelector('#query-preview').naturalWidth") == 220
            files = page.evaluate(FILES_ON_PAGE)
            page.screenshot(path=str(screenshot), full_page=True)
            if extra:
                Path(extra).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=extra, full_page=True)

            # "More like this" on the second tile: its neighbours, without itself.
            second = tiles.nth(1).locator(".name").text_content()
            tiles.nth(1).locator("button.more").click()
            expect(page.locator("#search-title")).to_have_text(f"More like {second}")
            expect(page.locator("#search-sub")).to_have_text(f"7 results · {MODEL}")
            assert second not in page.locator("#results .tile .name").all_text_contents()

            # Paging: k=3 reruns the same query; "load more" appends the next page.
            page.fill("#k", "3")
            page.locator("#k").dispatch_event("change")
            expect(tiles).to_have_count(3)
            page.click("#load-more")
            expect(tiles).to_have_count(6)
            page.fill("#k", "25")
            page.locator("#k").dispatch_event("change")
            expect(tiles).to_have_count(7)

            # Phone width: the grid keeps at most two columns.
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_function(ALL_THUMBNAILS_DECODED, arg="#results .tile img")
            lefts = page.eval_on_selector_all(
                "#results .tile", "ts => ts.map(t => Math.round(t.getBoundingClientRect().left))"
            )
            assert len(set(lefts)) == 2, lefts
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(tmp_path / "ui-narrow.png"), full_page=True)
            if extra:
                page.screenshot(path=str(Path(extra).with_name(Path(extra).stem + "-narrow.png")), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})

            # A text file named .jpg: the server's message shows in the banner, which dismisses.
            fake = tmp_path / "not-a-picture.jpg"
            fake.write_text("hello, I am text")
            page.set_input_files("#search-file", str(fake))
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error-text")).to_have_text(re.compile(r"not-a-picture|image", re.IGNORECASE))
            expect(tiles).to_have_count(0)  # no stale results under the error
            page.click("#error-close")
            expect(page.locator("#error")).to_be_hidden()

            # Compare with one indexed model: the server's 400 shows in the banner.
            page.click("#nav a[data-view=compare]")
            expect(page.locator("#compare-hint")).to_be_visible()
            page.set_input_files("#compare-file", str(photos / "p3.jpg"))
            expect(page.locator("#error-text")).to_contain_text("at least two models")
            page.click("#error-close")
            # Two models' answer, stubbed (only one model has weights offline): a column each,
            # side by side, stacked at phone width, and the agreement table.
            shown = [
                {
                    "id": r["id"],
                    "rank": i + 1,
                    "distance": 0.01 * i,
                    "path": r["path"],
                    "size": 1,
                    "width": 1,
                    "height": 1,
                    "also_at": [],
                    "thumbnail": f"/api/files/{r['id']}/thumbnail",
                }
                for i, r in enumerate(files)
            ]
            answer = {
                "query": "p3.jpg",
                "k": 3,
                "models": {MODEL: shown[:3], "other": shown[3:6]},
                "overlap": [{"models": [MODEL, "other"], "common": 0, "jaccard": 0.0, "rank_correlation": None}],
            }
            page.route(
                "**/api/compare",
                lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
            )
            page.click("#compare-form button[type=submit]")
            columns = page.locator("#compare-cols .col")
            expect(columns).to_have_count(2)
            expect(columns.nth(1).locator("h3")).to_have_text("other")
            expect(page.locator("#compare-agreement td")).to_have_text([f"{MODEL} vs other", "0 / 3", "0.00", "—"])
            assert len({box["y"] for box in boxes(columns)}) == 1
            page.set_viewport_size({"width": 390, "height": 844})
            assert len({box["x"] for box in boxes(columns)}) == 1
            page.set_viewport_size({"width": 1280, "height": 900})
            page.unroute("**/api/compare")

            # Duplicates: the byte copy of p0 is an identical group with a marked keeper.
            page.click("#nav a[data-view=duplicates]")
            group = page.locator("#dup-groups .group.identical")
            expect(group).to_have_count(1)
            expect(group).to_contain_text("×2 identical")
            expect(group.locator(".keeper .badge")).to_have_text("keep")
            expect(group.locator(".path")).to_have_text([re.compile(r"/p0\.jpg$")] * 2)
            page.wait_for_function(ALL_THUMBNAILS_DECODED, arg="#dup-groups img")

            # Status: the folder and the model, and the unreadable-files toggle.
            page.click("#nav a[data-view=status]")
            expect(page.locator("#status-body")).to_contain_text(str(photos))
            expect(page.locator("#status-body")).to_contain_text(MODEL)
            page.check("#show-failed")
            expect(page.locator("#status-body")).to_contain_text("Unreadable files (0)")

            # Index: re-indexing the same folder runs a job followed over SSE to "done".
            page.click("#nav a[data-view=index]")
            expect(page.locator(f"#index-models input[value='{MODEL}']")).to_be_checked()
            page.fill("#index-folders", str(photos))
            page.click("#index-start")
            expect(page.locator("#job-state")).to_have_text("Index job done", timeout=30_000)
            expect(page.locator("#job-counts")).to_contain_text("Unchanged")
            expect(page.locator("#error")).to_be_hidden()
            assert not page_errors, page_errors
        finally:
            browser.close()


@pytest.fixture(scope="module")
def served_with_text(executable, tmp_path_factory):
    """A running server of a library indexed with the tiny DreamSim-DINO and a tiny OpenAI
    CLIP (both towers), serving both: (its URL, the photo folder)."""
    from tests.helpers.official_layout import write_tiny_cache, write_tiny_openai_clip

    root = tmp_path_factory.mktemp("browser_text")
    weights = write_tiny_openai_clip(root / "weights")
    write_tiny_cache(weights, "dino_vitb16")
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        photo_like(220, 160, 60 + i).save(photos / f"t{i}.jpg", quality=90)
    with Library.open(root / "lib", weights_dir=weights, device="cpu") as library:
        library.index([photos], models=[MODEL, "clip"], options=IndexOptions(workers=0))
    with running_server(root / "lib", weights, "--models", f"{MODEL},clip") as url:
        yield url, photos


def test_text_search_then_more_like_this_by_look(served_with_text, executable):
    """Words in the text box search the clip vectors (the server's order, shown without a
    query picture); "More like this" on a text result goes on with DreamSim, even when the
    model menu said clip."""
    import httpx
    from playwright.sync_api import expect, sync_playwright

    url, _photos = served_with_text
    expected = [
        r["path"]
        for r in httpx.post(url + "/api/search/text", json={"text": "ramen in a paper bowl"}).json()["results"]
    ]
    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(url + "/")
            expect(page.locator("#model option")).to_have_text(["clip", MODEL])
            page.select_option("#model", "clip")
            page.fill("#search-text", "ramen in a paper bowl")
            page.press("#search-text", "Enter")
            tiles = page.locator("#results .tile")
            expect(page.locator("#search-title")).to_have_text("Results for “ramen in a paper bowl”")
            expect(page.locator("#search-sub")).to_have_text("6 results · clip")
            expect(page.locator("#search-head .thumb.query")).to_be_hidden()
            assert [tiles.nth(i).locator(".name").get_attribute("title") for i in range(6)] == expected

            page.fill("#search-text", "a bowl of ramen " * 30)
            page.click("#search-text-go")
            expect(page.locator("#search-sub")).to_contain_text("cut to the 77 tokens CLIP reads")

            first = tiles.first.locator(".name").text_content()
            tiles.first.locator("button.more").click()
            expect(page.locator("#search-title")).to_have_text(f"More like {first}")
            expect(page.locator("#search-sub")).to_have_text(f"5 results · {MODEL}")
            expect(page.locator("#model")).to_have_value(MODEL)
            expect(page.locator("#search-head .thumb.query")).to_be_visible()
            assert not page_errors, page_errors
        finally:
            browser.close()
