"""Issue 23, item 5: indexing on a slow CPU model never leaves a user staring at a frozen
bar. Batches are sized by the model's time (the first is one image), Ctrl-C is answered
after the model call in flight and keeps what is embedded, and the terminal bar, the job's
event stream and the web UI's bar count images embedded out of images to embed.

The model is the tiny DreamSim-DINO with random weights, slowed by a sleep per image before
its real forward pass (``tests/helpers/slowed_model.py``): the speed of the DreamSim
ensemble on two cores, and nothing of the model's code path skipped."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import dreamsearch.indexer.pace as pace
from dreamsearch.cli import main
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.models.embedder import Embedder
from tests.helpers.http_api import MODEL, app_over
from tests.helpers.images import photo_folder
from tests.helpers.indexing import vectors_in
from tests.helpers.slowed_model import slowed_embed

SLOWED_CLI = Path(__file__).resolve().parents[1] / "helpers" / "slowed_model.py"
REPO = Path(__file__).resolve().parents[2]


def slow_model(monkeypatch, seconds_per_image: float, step_seconds: float) -> list[int]:
    """Slow every model down to ``seconds_per_image`` and size the CPU steps to
    ``step_seconds`` of work (5 s in production: shorter keeps the tests short). Returns
    the list each model call appends its batch size to."""
    sizes: list[int] = []
    monkeypatch.setattr(Embedder, "embed", slowed_embed(seconds_per_image, sizes))
    monkeypatch.setattr(pace, "STEP_SECONDS", step_seconds)
    return sizes


def commits_of(library: LibraryLayout):
    """A progress callback that notes the catalog's vector count each time ``embedded``
    moves, and the list it appends to."""
    seen: list[int] = []

    def progress(report) -> None:
        if report.embedded and (not seen or seen[-1] != report.embedded):
            seen.append(vectors_in(library))

    return progress, seen


# batches sized by time ---------------------------------------------------------------


@pytest.mark.slow
def test_on_a_cpu_the_first_commit_is_one_image_and_the_next_ones_a_step_of_work(tmp_path, tiny_model, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 14, (64, 48), 10, "p{:02d}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    sizes = slow_model(monkeypatch, seconds_per_image=0.2, step_seconds=1.0)
    progress, committed = commits_of(library)
    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1), progress)
    assert report.embedded == 14 and sum(sizes) == 14
    assert committed[0] == 1  # the first image alone is committed before the model takes more
    assert sizes[0] == 1 and all(3 <= n <= 5 for n in sizes[1:-1]), sizes  # ~1 s of 0.2 s images
    assert [b - a for a, b in pairwise([0, *committed])] == sizes  # one commit per model call


def test_an_explicit_batch_size_still_sets_the_commits_and_the_model_takes_it_a_step_at_a_time(
    tmp_path, tiny_model, monkeypatch
):
    folder = photo_folder(tmp_path / "photos", 12, (64, 48), 30, "p{:02d}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    sizes = slow_model(monkeypatch, seconds_per_image=0.2, step_seconds=1.0)
    progress, committed = commits_of(library)
    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1, batch_size=6), progress)
    assert report.embedded == 12 and committed == [6, 12]
    assert sizes[0] == 1 and max(sizes) <= 5, sizes  # Ctrl-C would wait for one of these, not for 6


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_on_cuda_batches_stay_at_32(tmp_path, tiny_weights, monkeypatch):
    from dreamsearch.models import load_model

    folder = photo_folder(tmp_path / "photos", 40, (64, 48), 50, "p{:02d}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    sizes = slow_model(monkeypatch, seconds_per_image=0.0, step_seconds=1.0)
    model = load_model("dreamsim-dino", weights_dir=tiny_weights, device="cuda")
    report = index_folders(library, [folder], [model], IndexOptions(workers=1))
    assert report.embedded == 40 and sizes == [32, 8]


# Ctrl-C ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_on_a_slow_model_exits_within_seconds_keeping_what_is_embedded(tmp_path, tiny_weights):
    """A real ``dreamsearch index`` at 0.2 images/s (5 s per image, the ensemble on two
    cores). It used to finish the batch in flight after Ctrl-C (32 images: minutes)."""
    folder = photo_folder(tmp_path / "photos", 12, (64, 48), 70, "p{:02d}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    args = [
        "index",
        str(folder),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(tiny_weights),
        "--library",
        str(library.root),
        "--workers",
        "1",
        "--json",
    ]
    child = subprocess.Popen(
        [sys.executable, str(SLOWED_CLI), "5", *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while vectors_in(library) < 1 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    stdout, stderr = child.communicate(timeout=120)
    took = time.monotonic() - interrupted
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    # One image in flight (5 s), the commit and the index save: the old code embedded the
    # rest of its batch (55 s here). The bound leaves room for a busy machine.
    assert took < 15, f"{took:.1f} s from Ctrl-C to exit"
    kept = json.loads(stdout.strip().splitlines()[-1])["embedded"]
    assert 1 <= kept <= 3 and vectors_in(library) == kept  # what was embedded is in the catalog

    again = subprocess.run([sys.executable, "-m", "dreamsearch", *args], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert (summary["embedded"], summary["unchanged"]) == (12 - kept, kept)  # only the rest
    assert vectors_in(library) == 12


# what the bar counts -----------------------------------------------------------------


def test_progress_counts_images_to_embed_and_says_when_the_scan_still_counts(tmp_path, tiny_model, monkeypatch):
    """Indexed files, copies of indexed photos and unreadable files are no work; the total
    is known only once the scan ends (a folder larger than the read-ahead pauses it)."""
    folder = photo_folder(tmp_path / "photos", 3, (64, 48), 90, "old{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index_folders(library, [folder], [tiny_model], IndexOptions(workers=1))
    shutil.copy(folder / "old0.jpg", folder / "a-copy.jpg")
    (folder / "b-broken.jpg").write_bytes(b"\xff\xd8\xff not a picture")
    photo_folder(folder, 70, (64, 48), 100, "new{:02d}.jpg")
    slow_model(monkeypatch, seconds_per_image=0.02, step_seconds=0.2)
    seen = []

    def progress(report) -> None:
        seen.append((report.embedded, report.to_embed, report.scanning))

    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1), progress)
    assert (report.embedded, report.to_embed, report.copied, report.failed) == (70, 70, 1, 1)
    counting = [to_embed for _embedded, to_embed, scanning in seen if scanning]
    assert counting and min(counting) < 70  # the scan was still finding files
    after = [(embedded, to_embed) for embedded, to_embed, scanning in seen if not scanning]
    assert after and all(to_embed == 70 for _embedded, to_embed in after)  # final once counted
    assert [embedded for embedded, *_ in seen] == sorted(embedded for embedded, *_ in seen)


@pytest.mark.slow
def test_the_terminal_bar_shows_embedded_of_to_embed_counting_and_the_models_rate(tmp_path, tiny_weights, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 70, (64, 48), 130, "p{:02d}.jpg")
    slow_model(monkeypatch, seconds_per_image=0.1, step_seconds=0.5)  # the model: 10 images/s
    outcome = CliRunner().invoke(
        main,
        [
            "index",
            str(folder),
            "-m",
            "dreamsim-dino",
            "--weights-dir",
            str(tiny_weights),
            "--library",
            str(tmp_path / "lib"),
            "--workers",
            "1",
        ],
        env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "200"},
    )  # a terminal, to rich
    assert outcome.exit_code == 0, outcome.output
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", outcome.stderr)
    shown = re.findall(r"(\d+)/(\d+)( counting…)? ([\d.]+) img/s", frames)
    assert any(counting and int(total) < 70 for _done, total, counting, _rate in shown), shown
    done, total, counting, rate = shown[-1]
    assert (done, total, counting) == ("70", "70", "")
    assert 4 < float(rate) <= 12  # the model's pace, not the reading's (hundreds of files/s)


# the job's event stream and the web UI's bar -----------------------------------------


@pytest.mark.slow
def test_an_index_job_streams_its_counts_while_it_embeds(tmp_path, tiny_weights, monkeypatch):
    """It used to send two events, start and done, around a bar that sat full."""
    photos = photo_folder(tmp_path / "photos", 9, (64, 48), 160, "p{}.jpg")
    slow_model(monkeypatch, seconds_per_image=0.3, step_seconds=0.6)
    with TestClient(app_over(tmp_path / "lib", tiny_weights), base_url="http://127.0.0.1") as client:
        job_id = client.post("/api/index", json={"folders": [str(photos)], "models": [MODEL]}).json()["job"]
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    running = [e["counts"] for e in events if e["state"] == "running"]
    embedded = sorted({c["embedded"] for c in running if not c["scanning"]})
    assert len(embedded) >= 3, running  # the count moved while the job ran, a step at a time
    assert all(c["to_embed"] == 9 for c in running if not c["scanning"]), running
    assert events[-1]["state"] == "done" and events[-1]["counts"]["embedded"] == events[-1]["counts"]["to_embed"] == 9


@pytest.mark.browser
@pytest.mark.server
def test_the_web_ui_bar_is_images_embedded_out_of_images_to_embed(tmp_path, tiny_weights, monkeypatch):
    """In Debian's Chromium, against the app served by uvicorn in this process (so the model
    can be slowed): mid-job, the bar and the "Embedded" count say the same."""
    from playwright.sync_api import expect

    from tests.helpers.browser import index_page

    photos = photo_folder(tmp_path / "photos", 10, (64, 48), 190, "p{}.jpg")
    slow_model(monkeypatch, seconds_per_image=0.5, step_seconds=0.5)
    with index_page(app_over(tmp_path / "lib", tiny_weights), timeout_ms=30_000) as page:
        page.fill("#index-folders", str(photos))
        page.click("#index-start")
        counts = page.locator("#job-counts div").filter(has_text="Embedded").locator("dd")
        expect(counts).to_have_text(re.compile(r"^[1-8] / 10$"))  # mid-job, the scan done
        bar = page.eval_on_selector("#job-progress", "bar => [bar.value, bar.max]")
        shown = page.evaluate("() => document.querySelector('#job-counts').textContent")
        assert bar[1] == 10 and 1 <= bar[0] <= 9, (bar, shown)
        expect(page.locator("#job-state")).to_have_text("Index job done")
        expect(counts).to_have_text("10 / 10")
        assert page.eval_on_selector("#job-progress", "bar => [bar.value, bar.max]") == [10, 10]
