"""``dreamsearch watch``: real folders, real inotify events, the tiny DreamSim-DINO. The
watcher runs in a thread of this process where it can (fast), and as a real process where
the test is about the process: Ctrl-C, kill -9, memory, a mount in its namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from dreamsearch.api import IndexOptions, Library
from dreamsearch.layout import LibraryLayout
from dreamsearch.watcher.loop import Watcher
from dreamsearch.watcher.settle import Settler, ignored
from tests.helpers.cli import invoke, invoke_in
from tests.helpers.images import photo_folder, photo_like
from tests.helpers.indexing import index, library_state, stored_paths, vectors_in
from tests.helpers.mounts import in_mount_namespace

#: The watchers started here run as a user's would, from the saved graph of ``tiny_weights``.
pytestmark = pytest.mark.usefixtures("as_users_run")
MODEL = "dreamsim-dino"
SETTLE = 0.3


def wait_for(condition: Callable[[], object], timeout: float = SETTLE + 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


@contextmanager
def watching(
    lib: Path, weights: Path, *folders: Path, settle: float = SETTLE, rescan_every_s: float = 600.0
) -> Iterator[tuple[list, list, Watcher]]:
    """A watcher in a thread; yields its batch documents and lines as they come, and
    itself, once it has caught up. Stopping it must take seconds at most."""
    batches: list[dict] = []
    lines: list[str] = []
    library = Library.open(lib, weights_dir=weights, device="cpu")
    watcher = Watcher(
        library,
        folders,
        [MODEL],
        settle,
        rescan_every_s,
        say=lines.append,
        on_batch=batches.append,
        options=IndexOptions(workers=1),
    )
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        wait_for(lambda: batches, 60, "the catch-up")
        yield batches, lines, watcher
    finally:
        watcher.stop.set()
        thread.join(10)
        library.close()
    assert not thread.is_alive()


def total(batches: list[dict], key: str, after: int = 1) -> int:
    return sum(batch[key] for batch in batches[after:])


def findable(library: Library, photo: Path) -> bool:
    matches = library.search(library.query(photo.read_bytes(), model=MODEL), k=3, include_self=True).matches
    return bool(matches) and matches[0].path == str(photo) and matches[0].distance < 1e-3


# the settle rule and the names left alone -----------------------------------------------


def test_a_path_is_ready_once_its_size_and_time_held_for_the_settle_time(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x" * 10)
    settler = Settler(2.0)
    settler.note(str(photo), now=100.0)
    assert settler.ready(101.9) == []
    with photo.open("ab") as growing:
        growing.write(b"y")
    assert settler.ready(102.0) == []  # it changed: its clock starts again
    assert settler.ready(103.9) == [] and len(settler) == 1
    assert settler.ready(104.0) == [str(photo)] and len(settler) == 0


@pytest.mark.parametrize(
    "name",
    [
        "a.jpg.tmp",
        "a.jpg~",
        "a.jpg.part",
        "a.jpg.crdownload",
        ".a.jpg",
        ".syncthing.a.jpg.tmp",
        "~syncthing~a.jpg.tmp",
        ".git/x.jpg",
        "@eaDir/a.jpg",
    ],
)
def test_temporary_and_hidden_names_are_ignored(name):
    assert ignored(name)
    assert not ignored("album/a.jpg")


def test_an_index_run_after_renaming_most_of_a_folder_records_moves_not_a_loss(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    photo_folder(photos / "album", 3, (64, 48), 1, "a{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    (photos / "album").rename(photos / "renamed")
    report = index(library, photos, tiny_model)
    assert (report.moved, report.kept, report.embedded) == (3, 0, 0)
    assert stored_paths(library) == [str(photos / "renamed" / f"a{i}.jpg") for i in range(3)]


# what a user sees, in a thread ---------------------------------------------------------------


def test_added_photos_are_findable_and_deleted_ones_never_come_back(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "old{}.jpg")
    with (
        watching(tmp_path / "lib", tiny_weights, photos) as (batches, _lines, _watcher),
        Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library,
    ):
        added = [photos / f"new{i}.jpg" for i in range(20)]
        photo_folder(photos, 20, (96, 72), 10, "new{}.jpg")
        wait_for(lambda: total(batches, "added") == 20, what="20 photos added")
        assert all(findable(library, photo) for photo in added)
        gone = added[:5]
        kept_bytes = [photo.read_bytes() for photo in gone]
        for photo in gone:
            photo.unlink()
        wait_for(lambda: total(batches, "removed") == 5, what="5 photos removed")
        for data in kept_bytes:
            paths = {m.path for m in library.search(library.query(data, model=MODEL), k=30, include_self=True).matches}
            assert paths.isdisjoint(map(str, gone))
        assert total(batches, "embedded") == 20 and total(batches, "failed") == 0


def test_a_renamed_album_is_a_move_and_nothing_is_embedded(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    photo_folder(photos / "album", 30, (64, 48), 1, "a{}.jpg")
    photo_folder(photos, 2, (64, 48), 100, "top{}.jpg")
    with watching(tmp_path / "lib", tiny_weights, photos) as (batches, lines, _watcher):
        (photos / "album").rename(photos / "summer")
        wait_for(lambda: total(batches, "moved") == 30, what="the album moved")
        assert total(batches, "embedded") == 0 and total(batches, "removed") == 0
    assert stored_paths(LibraryLayout(tmp_path / "lib")) == sorted(
        [str(photos / "summer" / f"a{i}.jpg") for i in range(30)] + [str(photos / f"top{i}.jpg") for i in range(2)]
    )
    assert not [line for line in lines if line.startswith("warning")]  # a rename is not an unmounted drive


@pytest.mark.slow
def test_a_photo_written_slowly_is_indexed_once_complete(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    source = tmp_path / "big.jpg"
    photo_like(1600, 1200, 3).save(source, quality=100)
    data = source.read_bytes()
    chunk = len(data) // 4 + 1
    with watching(tmp_path / "lib", tiny_weights, photos, settle=1.0) as (batches, _lines, _watcher):
        with (photos / "big.jpg").open("wb") as writing:
            for start in range(0, len(data), chunk):
                writing.write(data[start : start + chunk])
                writing.flush()
                time.sleep(0.4)  # a camera or a sync client, pausing under the settle time
        wait_for(lambda: total(batches, "added") == 1, 12, what="the photo indexed")
        time.sleep(1.5)
        assert total(batches, "failed") == 0 and total(batches, "embedded") == 1 and total(batches, "changed") == 0
    assert library_state(LibraryLayout(tmp_path / "lib")).keys() == {str(photos / "big.jpg")}


def test_temporary_names_wait_until_renamed_into_place(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    with watching(tmp_path / "lib", tiny_weights, photos) as (batches, _lines, _watcher):
        photo_like(96, 72, 5).save(photos / "download.jpg.crdownload", format="JPEG")
        time.sleep(SETTLE * 4)
        assert total(batches, "added") == 0  # the batches' diff would have taken any image there
        (photos / "download.jpg.crdownload").rename(photos / "download.jpg")
        wait_for(lambda: total(batches, "added") == 1, what="the renamed file")
    assert stored_paths(LibraryLayout(tmp_path / "lib")) == [str(photos / "download.jpg")]


def test_a_cli_index_of_another_folder_succeeds_while_watching(tmp_path, tiny_weights):
    watched = photo_folder(tmp_path / "watched", 2, (64, 48), 1, "w{}.jpg")
    other = photo_folder(tmp_path / "other", 3, (64, 48), 10, "o{}.jpg")
    with watching(tmp_path / "lib", tiny_weights, watched) as (batches, _lines, _watcher):
        result = invoke_in(tmp_path / "lib", tiny_weights, "index", str(other), "-m", MODEL, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["embedded"] == 3
        photo_folder(watched, 1, (64, 48), 20, "late{}.jpg")
        wait_for(lambda: total(batches, "added") == 1, what="a photo after the CLI run")


def test_a_batch_waits_for_a_busy_writer_lock_and_says_so_once(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 1, (64, 48), 1, "p{}.jpg")
    with watching(tmp_path / "lib", tiny_weights, photos) as (batches, lines, _watcher):
        with LibraryLayout(tmp_path / "lib").writer_lock():  # another `dreamsearch index`
            photo_folder(photos, 2, (64, 48), 10, "n{}.jpg")
            time.sleep(SETTLE + 1)
            assert total(batches, "added") == 0
        wait_for(lambda: total(batches, "added") == 2, what="the batch after the lock")
    assert sum("waiting for it to finish" in line for line in lines) == 1


def test_a_folder_that_goes_missing_is_told_once_and_caught_up_without_embedding(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "drive" / "photos", 4, (64, 48), 1, "p{}.jpg")
    with watching(tmp_path / "lib", tiny_weights, photos) as (batches, lines, _watcher):
        (tmp_path / "drive").rename(tmp_path / "unplugged")
        wait_for(lambda: any("is missing" in line for line in lines), what="the missing folder told")
        status = invoke("status", "--library", str(tmp_path / "lib")).stdout
        assert f"watching: warning: watched folder {photos} is missing" in status
        (tmp_path / "unplugged").rename(tmp_path / "drive")
        wait_for(lambda: len(batches) == 2, what="the catch-up when it came back")
        assert batches[1]["reason"] == "catch-up" and batches[1]["embedded"] == 0
        assert "watching:" not in invoke("status", "--library", str(tmp_path / "lib")).stdout
    assert sum(line.startswith("warning") for line in lines) == 1
    assert len(stored_paths(LibraryLayout(tmp_path / "lib"))) == 4


def test_without_events_it_says_so_once_and_rescans(tmp_path, tiny_weights, monkeypatch):
    import watchfiles

    def watch_limit(*paths, **options):  # what watchfiles raises when inotify runs out of watches
        raise OSError('OS file watch limit reached. about ["/photos"]')
        yield

    monkeypatch.setattr(watchfiles, "watch", watch_limit)
    photos = photo_folder(tmp_path / "photos", 1, (64, 48), 1, "p{}.jpg")
    with watching(tmp_path / "lib", tiny_weights, photos, rescan_every_s=1.0) as (batches, lines, watcher):
        photo_folder(photos, 1, (64, 48), 10, "n{}.jpg")
        wait_for(lambda: total(batches, "added") == 1, 5, "a rescan")
        assert watcher.document()["folders"][0]["mode"] == "rescans every 1 s"
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 1 and "watch limit" in warnings[0] and "rescanning every 1 s" in warnings[0]


# the real process ------------------------------------------------------------------------


def watch_command(lib: Path, weights: Path, folder: Path, settle: float = SETTLE) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dreamsearch",
        "watch",
        str(folder),
        "-m",
        MODEL,
        "--library",
        str(lib),
        "--weights-dir",
        str(weights),
        "--device",
        "cpu",
        "--settle",
        str(settle),
        "--json",
    ]


@contextmanager
def watch_process(command: list[str]) -> Iterator[tuple[subprocess.Popen, list[dict]]]:
    """The watcher as a user starts it; its JSON lines as they come."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    batches: list[dict] = []
    reader = threading.Thread(target=lambda: batches.extend(json.loads(line) for line in process.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: batches or process.poll() is not None, 120, "the catch-up")
        yield process, batches
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_ctrl_c_stops_within_seconds_and_a_burst_is_a_few_batches_in_flat_memory(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 1, (64, 48), 1, "p{}.png")
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(3000):
        photo_like(16, 16, i).save(staging / f"s{i}.png")
    with watch_process(watch_command(tmp_path / "lib", tiny_weights, photos)) as (process, batches):
        before = peak = rss_mb(process.pid)
        copying = threading.Thread(target=shutil.copytree, args=(staging, photos / "burst"))
        copying.start()
        while process.poll() is None and total(batches, "added", after=0) < 3001:
            peak = max(peak, rss_mb(process.pid))
            time.sleep(0.1)
        copying.join()
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert process.wait(15) == 0
        assert time.monotonic() - started < 5
        # One index run's working set (reading threads, a batch: 90-180 MB measured, flat from
        # the 162nd file to the 2,882nd on a quiet machine), not the burst's 3,000 decoded
        # pictures (~450 MB at the model's input size).
        assert peak - before < 300, (before, peak)
        assert 2 <= len(batches) <= 5, batches  # the catch-up, then a few runs
        assert total(batches, "failed", after=0) == 0
    assert len(stored_paths(LibraryLayout(tmp_path / "lib"))) == 3001


@pytest.mark.slow
def test_a_watcher_killed_mid_burst_then_restarted_equals_a_clean_index(tmp_path, tiny_weights, tiny_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    lib = LibraryLayout(tmp_path / "lib")
    staging = photo_folder(tmp_path / "staging", 120, (96, 72), 1, "s{}.jpg")
    with watch_process(watch_command(lib.root, tiny_weights, photos)) as (process, _batches):
        shutil.copytree(staging, photos / "burst")
        wait_for(lambda: vectors_in(lib) >= 10, 60, "a first commit")
        process.send_signal(signal.SIGKILL)
    assert vectors_in(lib) < 120
    with watch_process(watch_command(lib.root, tiny_weights, photos)) as (process, batches):
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
    assert batches[0]["reason"] == "catch-up"
    clean = LibraryLayout.prepare(tmp_path / "clean")
    index(clean, photos, tiny_model)
    resumed, expected = library_state(lib), library_state(clean)
    assert resumed.keys() == expected.keys() and len(expected) == 120
    for path, vector in expected.items():
        np.testing.assert_allclose(resumed[path], vector, atol=1e-6)


@pytest.mark.slow
def test_an_empty_mount_over_a_watched_folder_keeps_its_files_and_warns_once(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 4, (64, 48), 1, "p{}.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    command = " ".join(watch_command(tmp_path / "lib", tiny_weights, photos))
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    done = in_mount_namespace(f"""
        batches() {{ for i in $(seq 300); do [ "$(grep -c seq {out})" -ge "$1" ] && return; sleep 0.1; done; exit 7; }}
        PYTHONUNBUFFERED=1 {command} > {out} 2> {err} &
        watcher=$!
        batches 1
        mount --bind {empty} {photos}
        batches 2
        umount {photos}
        batches 3
        kill -INT $watcher
        wait $watcher
    """)
    assert done.returncode == 0, done.stderr + err.read_text()
    batches = [json.loads(line) for line in out.read_text().splitlines()]
    assert [b["reason"] for b in batches] == ["catch-up"] * 3
    assert batches[1]["kept"] == 4 and batches[1]["removed"] == 0
    assert batches[2]["embedded"] == 0 and batches[2]["kept"] == 0
    warnings = [line for line in err.read_text().splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "4 of its 4 indexed files are gone" in warnings[0], err.read_text()
    assert len(stored_paths(LibraryLayout(tmp_path / "lib"))) == 4
