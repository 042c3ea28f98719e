"""The indexer on a messy real folder: every format, every kind of bad file, incremental
runs, copies and moves, and a SIGKILL in the middle of a run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamsearch.catalog import Catalog
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.scan import ScannedFile
from dreamsearch.vector_index import open_index
from tests.helpers.backends import AS_USERS_RUN
from tests.helpers.images import exif, make_messy_folder, photo_folder, photo_like
from tests.helpers.indexing import INDEX_SCRIPT, kill_at_vectors, library_state, vectors_in

ONE_WORKER = IndexOptions(batch_size=4, workers=1)


def run_index(library: LibraryLayout, folder: Path, model, options: IndexOptions = ONE_WORKER):
    return index_folders(library, [folder], [model], options)


def test_messy_folder(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    bad = make_messy_folder(folder)
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = run_index(library, folder, tiny_model, IndexOptions(batch_size=4, workers=1, max_pixels=200_000_000))
    reasons = {Path(path).name: reason for path, reason in report.failures}
    for name, expected in bad.items():
        assert expected in reasons.pop(name), name
    assert reasons == {}  # nothing else failed: every odd mode decoded
    state = library_state(library)
    good = {Path(p).name for p, v in state.items() if not isinstance(v, str)}
    assert good == {
        "plain.jpg",
        "rot6.jpg",
        "rot8.jpg",
        "progressive.jpg",
        "alpha.png",
        "palette.png",
        "deep16.png",
        "cmyk.jpg",
        "grey.jpg",
        "anim.gif",
        "photo.webp",
        "phone.heic",
        "old.bmp",
        "scan.tiff",
        "no_extension",
        "ラーメン.jpg",
        "unicode-é.png",
        os.fsdecode(b"latin1-caf\xe9.jpg"),
    }
    assert report.failed == 4 and report.embedded == 18 - 1  # ラーメン.jpg has plain.jpg's bytes: a copy
    assert report.copied == 1
    assert library_state(library).keys() == state.keys()  # names survive the round trip


def test_exif_rotated_embeds_like_the_rotated_pixels(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    picture = photo_like(300, 200, 21)
    picture.save(folder / "tagged.png", exif=exif(6))
    picture.transpose(Image.Transpose.ROTATE_270).save(folder / "rotated.png")
    library = LibraryLayout.prepare(tmp_path / "lib")
    run_index(library, folder, tiny_model)
    state = library_state(library)
    np.testing.assert_allclose(state[str(folder / "tagged.png")], state[str(folder / "rotated.png")], atol=1e-6)


def test_symlink_loop_with_follow_is_reported_and_the_run_goes_on(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo_like(100, 80, 1).save(folder / "a.jpg")
    os.symlink(folder, folder / "again")  # a folder loop
    os.symlink("self", folder / "self")
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = run_index(library, folder, tiny_model, IndexOptions(workers=1, follow_symlinks=True))
    assert report.embedded == 1
    assert any(Path(p).name == "self" for p, _reason in report.failures)


def test_vanished_and_unreadable_files_are_recorded(tmp_path, tiny_model, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo_like(100, 80, 1).save(folder / "a.jpg")
    photo_like(100, 80, 2).save(folder / "locked.jpg")
    import dreamsearch.indexer.diff as indexer

    real_scan, real_open = indexer.scan, os.open

    def scan_with_ghost(root, *args):
        yield from real_scan(root, *args)
        yield ScannedFile("ghost.jpg", 10, 1)  # listed, then deleted before it was read

    def guarded_open(path, *args, **kwargs):
        if str(path).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(indexer, "scan", scan_with_ghost)
    monkeypatch.setattr(os, "open", guarded_open)
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = run_index(library, folder, tiny_model, IndexOptions(workers=0))  # in-process, patched
    reasons = {Path(p).name: r for p, r in report.failures}
    assert reasons == {"ghost.jpg": "vanished before it could be read", "locked.jpg": "permission denied"}
    assert report.embedded == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files; covered by the patched test above")
def test_chmod_000_file_is_recorded(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo_like(100, 80, 1).save(folder / "locked.jpg")
    os.chmod(folder / "locked.jpg", 0)
    report = run_index(LibraryLayout.prepare(tmp_path / "lib"), folder, tiny_model)
    assert report.failures == [(str(folder / "locked.jpg"), "permission denied")]


def test_incremental_runs(tmp_path, tiny_model):
    folder = photo_folder(tmp_path / "photos", 6, (160, 120), 30, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")

    def step(expect: dict):
        report = run_index(library, folder, tiny_model)
        assert {k: report.summary()[k] for k in expect} == expect
        state = library_state(library)
        on_disk = {str(p) for p in folder.rglob("*.jpg")}
        assert set(state) == on_disk
        with Catalog(library.catalog_path) as catalog:  # every file finds itself first
            model = catalog.model("dreamsim-dino")
            index = open_index(catalog, model, library.index_dir)
            for path in on_disk:
                _, ids = index.search(state[path], 1)
                assert path in catalog.paths_of(ids[0].tolist())[int(ids[0, 0])]
        return report

    step({"new": 6, "embedded": 6})
    step({"unchanged": 6, "embedded": 0})
    os.utime(folder / "p0.jpg", ns=(1, 10**18))  # touched
    step({"unchanged": 6, "changed": 0, "embedded": 0})
    photo_like(160, 120, 99).save(folder / "p1.jpg")  # edited
    step({"changed": 1, "embedded": 1})
    shutil.copy(folder / "p2.jpg", folder / "p2-copy.jpg")
    step({"new": 1, "copied": 1, "embedded": 0})
    (folder / "sub").mkdir()
    os.rename(folder / "p3.jpg", folder / "sub" / "p3.jpg")
    step({"new": 1, "moved": 1, "removed": 1, "embedded": 0})
    (folder / "p4.jpg").unlink()
    step({"removed": 1, "embedded": 0})


def test_only_indexes_the_named_files_and_keeps_the_others(tmp_path, tiny_model):
    folder = photo_folder(tmp_path / "photos", 4, (160, 120), 60, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")

    def indexed_with(only):
        report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=0, only=only))
        return report, sorted(Path(p).name for p in library_state(library))

    report, names = indexed_with(frozenset({"p0.jpg", "p1.jpg", "absent.jpg"}))
    assert names == ["p0.jpg", "p1.jpg"] and report.found == 2 and report.embedded == 2
    report, names = indexed_with(frozenset({"p2.jpg"}))  # p0 and p1 are neither re-read nor forgotten
    assert names == ["p0.jpg", "p1.jpg", "p2.jpg"] and report.embedded == 1 and report.removed == 0
    report, names = indexed_with(None)
    assert names == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"] and report.embedded == 1 and report.unchanged == 3


def test_a_model_added_to_an_indexed_folder_embeds_every_file(tmp_path, tiny_model):
    from dreamsearch.models import load_model
    from tests.helpers.official_layout import write_tiny_cache

    other = load_model("dreamsim-clip", weights_dir=write_tiny_cache(tmp_path / "w", "clip_vitb32"), device="cpu")
    folder = photo_folder(tmp_path / "photos", 5, (160, 120), 80, "p{}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    run_index(library, folder, tiny_model)

    report = run_index(library, folder, other)
    assert (report.embedded, report.new, report.changed, report.unchanged) == (5, 0, 0, 1)  # broken stays failed
    with Catalog(library.catalog_path) as catalog:
        assert catalog.count_vectors(catalog.model("dreamsim-clip")) == 5
        assert catalog.count_vectors(catalog.model("dreamsim-dino")) == 5
    again = index_folders(library, [folder], [tiny_model, other], ONE_WORKER)
    assert (again.embedded, again.unchanged) == (0, 6)

    third = load_model(
        "dreamsim-open-clip", weights_dir=write_tiny_cache(tmp_path / "w3", "open_clip_vitb32"), device="cpu"
    )
    with Catalog(library.catalog_path) as catalog:
        before = {name: catalog.last_seq(catalog.model(name)) for name in ("dreamsim-dino", "dreamsim-clip")}
    both = index_folders(library, [folder], [tiny_model, third, other], ONE_WORKER)
    assert both.embedded == 5
    with Catalog(library.catalog_path) as catalog:  # only the new model computed vectors
        assert {name: catalog.last_seq(catalog.model(name)) for name in before} == before
        assert catalog.count_vectors(catalog.model("dreamsim-open-clip")) == 5


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_weights, tiny_model):
    folder = photo_folder(tmp_path / "photos", 60, (480, 360), 100, "img{:02d}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    killed = LibraryLayout.prepare(tmp_path / "killed")
    command = [sys.executable, "-c", INDEX_SCRIPT, str(tiny_weights), str(killed.root), str(folder)]
    as_users_run = {**os.environ, **AS_USERS_RUN}  # from the saved graph: no torch to import
    assert 10 <= kill_at_vectors(command, killed, 10, as_users_run) < 60, "the kill should land mid-run"

    subprocess.run(command, check=True, timeout=300, env=as_users_run)
    whole = LibraryLayout.prepare(tmp_path / "whole")
    run_index(whole, folder, tiny_model)
    resumed_state, whole_state = library_state(killed), library_state(whole)
    assert resumed_state.keys() == whole_state.keys() and len(whole_state) == 61
    for path, value in whole_state.items():
        if isinstance(value, str):
            assert resumed_state[path] == value
        else:
            np.testing.assert_allclose(resumed_state[path], value, atol=1e-6)


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_and_the_next_run_completes(tmp_path, tiny_weights):
    folder = photo_folder(tmp_path / "photos", 60, (480, 360), 300, "img{:02d}.jpg", quality=90)
    library = LibraryLayout.prepare(tmp_path / "lib")
    command = [
        sys.executable,
        "-m",
        "dreamsearch",
        "index",
        str(folder),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(tiny_weights),
        "--library",
        str(library.root),
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--quiet",
    ]
    as_users_run = {**os.environ, **AS_USERS_RUN}
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=as_users_run)
    deadline = time.time() + 120
    while time.time() < deadline and vectors_in(library) < 6:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    stopped_at = vectors_in(library)
    assert 6 <= stopped_at < 60
    with Catalog(library.catalog_path) as catalog:  # what was committed is indexed too
        model = catalog.model("dreamsim-dino")
        from dreamsearch.vector_index import VectorIndex

        assert len(VectorIndex.load(library.index_dir, "dreamsim-dino")) == catalog.count_vectors(model)
    subprocess.run(command, check=True, timeout=300, env=as_users_run)
    assert vectors_in(library) == 60
