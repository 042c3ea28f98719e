"""Debian's Chromium for the Playwright tests (``browser`` marker)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def chromium() -> str:
    """Chromium's path; the test is skipped where it is missing, unless
    ``DREAMSEARCH_REQUIRE_BROWSER=1`` (CI) makes that a failure."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("DREAMSEARCH_REQUIRE_BROWSER") == "1":
        pytest.fail("DREAMSEARCH_REQUIRE_BROWSER=1 but Debian chromium is not installed: apt install chromium")
    pytest.skip("Debian chromium not installed: apt install chromium")


@contextmanager
def index_page(app, timeout_ms: int) -> Iterator:
    """A Chromium page open on the web UI's Index tab, ``app`` served by uvicorn in this
    process (so a test can slow its model or disk), once the model's box is checked."""
    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers.http_api import MODEL

    executable = chromium()
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    serving.start()
    try:
        expect.set_options(timeout=timeout_ms)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{listener.getsockname()[1]}/#index")
                expect(page.locator(f"#index-models input[value='{MODEL}']")).to_be_checked()
                yield page
            finally:
                browser.close()
    finally:
        server.should_exit = True
        serving.join(10)
