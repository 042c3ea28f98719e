"""``dreamsearch serve`` started as a user starts it, for the real-server and browser tests:
a subprocess on a free loopback port, whose output is read all along (a full pipe would
block the server) and whose printed URL is where it listens."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers.backends import AS_USERS_RUN

MODEL = "dreamsim-dino"
#: What every server here runs with: offline, unbuffered, on the default backend.
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **AS_USERS_RUN}
URL = re.compile(r"http://(127\.0\.0\.1|\[::1\]|localhost):(\d+)")


def serve_command(library: Path, weights: Path, *extra: str, model: str = MODEL) -> list[str]:
    """``dreamsearch serve`` of ``library`` on a free loopback port, on the CPU, with the
    options ``extra``: the one command line every test starts a server with."""
    return [
        sys.executable,
        "-m",
        "dreamsearch",
        "serve",
        "--port",
        "0",
        "--library",
        str(library),
        "--weights-dir",
        str(weights),
        "--models",
        model,
        "--device",
        "cpu",
        *extra,
    ]


@contextmanager
def running_server(
    library: Path,
    weights: Path,
    *extra: str,
    env: dict | None = None,
    preexec_fn: Callable[[], None] | None = None,
    log: list[str] | None = None,
) -> Iterator[str]:
    """Yield the URL the server printed, once it answers; stop it afterwards. Its output
    lines are appended to ``log`` as they come; ``preexec_fn`` runs in the child (limits)."""
    process = subprocess.Popen(
        serve_command(library, weights, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=preexec_fn,
        env={**os.environ, **SERVER_ENV, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    log = [] if log is None else log

    def drain() -> None:
        for line in process.stdout:
            log.append(line)
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        url = _printed_url(process, lines)
        if url is None:
            raise AssertionError("the server printed no URL:\n" + "".join(log))
        _wait_until_it_answers(url)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _printed_url(process: subprocess.Popen, lines: queue.Queue) -> str | None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            found = URL.search(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        if found:
            return found.group(0)
    return None


def _wait_until_it_answers(url: str) -> None:
    """The URL is printed once bound; the models load in the lifespan, before answers."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/", timeout=5)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server never answered")
