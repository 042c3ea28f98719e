"""The ingest pipeline of ``dreamsearch index``: one read per file, streaming commits, no
stage that can hang the run, no model loaded when nothing needs embedding, Ctrl-C heard
at once, and the batched JPEG decoder (run here on its CPU backend)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import dreamsearch.indexer.diff as diff_module
import dreamsearch.indexer.pipeline as pipeline
import dreamsearch.indexer.writer as writer_module
from dreamsearch.catalog import Catalog
from dreamsearch.cli import main
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.indexer.gpu_decode import JpegBatchDecoder
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import PendingModel
from dreamsearch.scan import ScannedFile
from tests.helpers.images import photo_folder, photo_like


def stored_vectors(library: LibraryLayout) -> dict[str, np.ndarray]:
    """file name -> stored vector."""
    with Catalog(library.catalog_path) as catalog:
        model = catalog.model("dreamsim-dino")
        ids, vectors = catalog.vectors_for(model, catalog.vector_ids(model))
        paths = catalog.paths_of(ids.tolist())
        return {Path(p).name: vectors[i] for i, cid in enumerate(ids.tolist()) for p in paths[cid]}


def bytes_read_by_this_process() -> int:
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar:")).split()[1])


def test_a_first_run_reads_each_photo_once(tmp_path, tiny_model):
    folder = photo_folder(tmp_path / "photos", 12, (900, 700), 40, "p{:02d}.jpg", quality=95)
    shutil.copy(folder / "p00.jpg", folder / "copy.jpg")
    on_disk = sum(p.stat().st_size for p in folder.iterdir())
    warm_up = photo_folder(tmp_path / "warm-up", 1, (160, 120), 1, "w.jpg")  # imports read .py files once
    index_folders(LibraryLayout.prepare(tmp_path / "warm-lib"), [warm_up], [tiny_model], IndexOptions(workers=1))
    library = LibraryLayout.prepare(tmp_path / "lib")
    Catalog(library.catalog_path).close()  # migrations read their scripts: not the photos' cost
    before = bytes_read_by_this_process()
    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1, batch_size=4))
    ratio = (bytes_read_by_this_process() - before) / on_disk
    print(f"bytes read / bytes on disk: {ratio:.3f} ({on_disk} bytes on disk)")
    assert report.embedded == 12 and report.copied == 1 and report.read == 13
    assert ratio <= 1.1


def test_the_first_batch_is_committed_before_the_folder_is_read(tmp_path, tiny_model):
    folder = photo_folder(tmp_path / "photos", 30, (160, 120), 60, "p{:02d}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    seen = []

    def progress(report) -> None:
        if report.embedded and not seen:
            with sqlite3.connect(f"file:{library.catalog_path}?mode=ro", uri=True) as connection:
                committed = connection.execute("SELECT count(*) FROM vectors").fetchone()[0]
            seen.append((report.read, report.to_read, committed))

    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1, batch_size=2), progress)
    read, to_read, committed = seen[0]
    assert committed == 2 and report.to_read == report.read == 30
    assert read <= 2 + 2 * 2 + 2 * 1 + 1  # the batch, plus at most the bounded read-ahead
    assert to_read < 30  # the scan itself streams: it had not even listed every file yet


def test_a_fifo_and_a_huge_sparse_file_are_recorded_and_the_photos_indexed(tmp_path, tiny_model, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 3, (160, 120), 80, "p{}.jpg")
    with open(folder / "huge.jpg", "wb") as handle:
        handle.truncate(30 * 1024**3)  # sparse: no disk space used
    real_scan = diff_module.scan

    def scan_then_swap(root, *args):
        yield from real_scan(root, *args)
        os.mkfifo(folder / "swapped.jpg")  # listed as a photo, a FIFO by the time it is read
        yield ScannedFile("swapped.jpg", 1000, 1)

    monkeypatch.setattr(diff_module, "scan", scan_then_swap)
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1, batch_size=2))
    reasons = {Path(p).name: r for p, r in report.failures}
    assert reasons == {
        "huge.jpg": "30.0 GiB is over the file size limit of 2.0 GiB (--max-file-size)",
        "swapped.jpg": "not a regular file (a pipe, socket or device)",
    }
    assert report.embedded == 3


@pytest.mark.slow
def test_a_decoder_that_never_returns_costs_its_file_only(tmp_path, tiny_model, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 5, (160, 120), 90, "p{}.jpg")
    release = threading.Event()
    real_decode = pipeline.decode_bytes

    def decode(path, *args):
        if path.endswith("p2.jpg"):
            release.wait(60)
        return real_decode(path, *args)

    monkeypatch.setattr(pipeline, "decode_bytes", decode)
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1, batch_size=2, decode_timeout_s=1))
    release.set()
    assert report.failures == [(str(folder / "p2.jpg"), "reading and decoding took longer than 1 s")]
    assert report.embedded == 4


def test_no_model_is_loaded_when_nothing_needs_embedding(tmp_path, tiny_weights, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 4, (160, 120), 100, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    first = PendingModel("dreamsim-dino", weights_dir=tiny_weights, device="cpu")
    assert index_folders(library, [folder], [first], IndexOptions(workers=1)).embedded == 4

    def refuse(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(PendingModel, "load", refuse)
    handle = PendingModel("dreamsim-dino", weights_dir=tiny_weights, device="cpu")
    assert index_folders(library, [folder], [handle], IndexOptions(workers=1)).unchanged == 4
    shutil.copy(folder / "p1.jpg", folder / "copy.jpg")
    (folder / "p3.jpg").rename(folder / "moved.jpg")
    report = index_folders(library, [folder], [handle], IndexOptions(workers=1))
    assert (report.copied, report.moved, report.embedded) == (1, 1, 0)


class SlowModel:
    """The tiny model, holding each batch until the test lets it go."""

    def __init__(self, model) -> None:
        self.model = model
        self.name, self.dim, self.fingerprint = model.name, model.dim, model.fingerprint
        self.preprocess_spec, self.device, self.weights_root = model.preprocess_spec, model.device, model.weights_root
        self.started, self.release = threading.Event(), threading.Event()

    def load(self):
        return self

    def embed(self, pixels):
        self.started.set()
        self.release.wait(30)
        return self.model.embed(pixels)


def test_the_first_ctrl_c_is_answered_while_the_model_is_still_busy(tmp_path, tiny_model):
    assert threading.current_thread() is threading.main_thread()
    folder = photo_folder(tmp_path / "photos", 8, (160, 120), 110, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    model = SlowModel(tiny_model)
    heard_while_busy = []

    def progress(report) -> None:
        if report.stopping and not heard_while_busy:
            heard_while_busy.append(not model.release.is_set())
            model.release.set()

    def press_ctrl_c() -> None:
        if model.started.wait(30):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Timer(10, model.release.set).start()  # never hang the test

    threading.Thread(target=press_ctrl_c).start()
    report = index_folders(library, [folder], [model], IndexOptions(workers=1, batch_size=2), progress)
    assert heard_while_busy == [True]
    assert report.interrupted and report.embedded == 1  # the model call in flight (one image) was finished


def test_max_file_size_option_is_read_in_human_units(tmp_path, tiny_weights):
    folder = photo_folder(tmp_path / "photos", 2, (160, 120), 120, "p{}.jpg")
    photo_like(900, 700, 1).save(folder / "big.png")
    args = [
        "index",
        str(folder),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(tiny_weights),
        "--library",
        str(tmp_path / "lib"),
        "--json",
    ]
    outcome = CliRunner().invoke(main, [*args, "--max-file-size", "50KB"])
    assert outcome.exit_code == 0, outcome.output
    assert "big.png: " in outcome.stderr and "over the file size limit of 48.8 KiB" in outcome.stderr
    bad = CliRunner().invoke(main, [*args, "--max-file-size", "lots"])
    assert bad.exit_code == 2 and "'lots' is not a size" in bad.output


def mixed_jpeg_folder(folder: Path) -> Path:
    """Baseline JPEGs (to the batched decoder) and files it must leave to the CPU."""
    photo_folder(folder, 6, (1300, 1000), 130, "base{}.jpg", quality=92)  # large enough for the device
    photo_like(1300, 1000, 140).save(folder / "progressive.jpg", progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo_like(1300, 1000, 141).save(folder / "rotated.jpg", exif=exif)
    photo_like(320, 240, 142).convert("CMYK").save(folder / "cmyk.jpg")
    photo_like(320, 240, 143).convert("L").save(folder / "grey.jpg")
    photo_like(320, 240, 144).save(folder / "screen.png")
    return folder


def test_batched_jpeg_decoding_agrees_with_the_cpu_path(tmp_path, tiny_model, decode_device):
    folder = mixed_jpeg_folder(tmp_path / "photos")
    cpu, batched = LibraryLayout.prepare(tmp_path / "cpu"), LibraryLayout.prepare(tmp_path / "batched")
    index_folders(cpu, [folder], [tiny_model], IndexOptions(workers=1, batch_size=4))
    report = index_folders(
        batched, [folder], [tiny_model], IndexOptions(workers=1, batch_size=4, gpu_decode=decode_device)
    )
    assert report.embedded == 11 and report.failed == 0
    reference, ours = stored_vectors(cpu), stored_vectors(batched)
    assert set(reference) == set(ours)
    cosines = {name: float(reference[name] @ ours[name]) for name in reference}
    print("min cosine, batched vs CPU path:", min(cosines.values()))
    assert min(cosines.values()) >= 0.9999
    for routed_to_cpu in ("progressive.jpg", "rotated.jpg", "cmyk.jpg", "grey.jpg", "screen.png"):
        assert cosines[routed_to_cpu] == pytest.approx(1.0, abs=1e-6)  # the very same decoder
    with Catalog(batched.catalog_path) as catalog:
        ids = catalog.vector_ids(catalog.model("dreamsim-dino")).tolist()
        details = {Path(d.path).name: d for found in catalog.files_of_contents(ids).values() for d in found}
    assert (details["rotated.jpg"].width, details["rotated.jpg"].height) == (1000, 1300)
    assert (details["base0.jpg"].width, details["base0.jpg"].height) == (1300, 1000)


def test_a_file_the_batched_decoder_fails_on_goes_to_the_cpu_and_order_is_kept(
    tmp_path, tiny_model, monkeypatch, decode_device
):
    folder = mixed_jpeg_folder(tmp_path / "photos")
    real = JpegBatchDecoder._decode_jpeg

    def flaky(self, tensors):
        if len(tensors) > 1 or bytes(tensors[0][-200:].tolist()) == (folder / "base3.jpg").read_bytes()[-200:]:
            raise RuntimeError("nvjpeg: hardware decoder error")  # fails every batch and base3.jpg alone
        return real(self, tensors)

    monkeypatch.setattr(JpegBatchDecoder, "_decode_jpeg", flaky)
    cpu, batched = LibraryLayout.prepare(tmp_path / "cpu"), LibraryLayout.prepare(tmp_path / "batched")
    index_folders(cpu, [folder], [tiny_model], IndexOptions(workers=1, batch_size=4))
    report = index_folders(
        batched, [folder], [tiny_model], IndexOptions(workers=1, batch_size=4, gpu_decode=decode_device)
    )
    assert report.embedded == 11 and report.failed == 0
    reference, ours = stored_vectors(cpu), stored_vectors(batched)
    assert float(reference["base3.jpg"] @ ours["base3.jpg"]) == pytest.approx(1.0, abs=1e-6)  # the CPU fallback
    for name in reference:  # each file kept its own vector: nothing was shuffled in a batch
        best = max(ours, key=lambda other: float(reference[name] @ ours[other]))
        assert best == name


def test_while_the_device_is_behind_the_reading_threads_decode_jpegs_themselves(
    tmp_path, tiny_model, monkeypatch, decode_device
):
    folder = photo_folder(tmp_path / "photos", 12, (1300, 1000), 170, "base{}.jpg", quality=92)
    real = JpegBatchDecoder._decode_jpeg
    on_device: list[int] = []

    def slow(self, tensors):  # a device far slower than two reading threads
        time.sleep(0.4)
        on_device.append(len(tensors))
        return real(self, tensors)

    monkeypatch.setattr(JpegBatchDecoder, "_decode_jpeg", slow)
    cpu, shared = LibraryLayout.prepare(tmp_path / "cpu"), LibraryLayout.prepare(tmp_path / "shared")
    index_folders(cpu, [folder], [tiny_model], IndexOptions(workers=2, batch_size=2))
    report = index_folders(
        shared, [folder], [tiny_model], IndexOptions(workers=2, batch_size=2, gpu_decode=decode_device)
    )
    assert report.embedded == 12 and report.failed == 0
    assert 0 < sum(on_device) < 12  # the device took its share, the reading threads the rest
    reference, ours = stored_vectors(cpu), stored_vectors(shared)
    exact = [name for name in reference if float(reference[name] @ ours[name]) == pytest.approx(1.0, abs=1e-6)]
    assert len(exact) >= 12 - sum(on_device)  # decoded by Pillow, as on the CPU path
    for name in reference:  # and each file kept its own vector in the mixed batches
        assert max(ours, key=lambda other: float(reference[name] @ ours[other])) == name
        assert float(reference[name] @ ours[name]) >= 0.9999


class ClaimsDevice:
    """The tiny model (it runs on the CPU), reporting ``device`` as a model loaded there would."""

    def __init__(self, model, device: str) -> None:
        self.model, self.device, self.weights_root = model, device, None
        self.name, self.fingerprint, self.preprocess_spec = model.name, model.fingerprint, model.preprocess_spec
        self.dim = model.dim

    def load(self):
        return self.model


@pytest.mark.parametrize("device, batched", [("cuda", True), ("cpu", False)])
def test_by_default_jpegs_are_batch_decoded_when_the_models_run_on_cuda(
    tmp_path, tiny_model, monkeypatch, device, batched
):
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded_on: list[str] = []

    def on_this_cpu(self, tensors):  # what the CUDA decoder returns, computed here
        decoded_on.append(self.device)
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cpu"))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(JpegBatchDecoder, "_decode_jpeg", on_this_cpu)
    folder = mixed_jpeg_folder(tmp_path / "photos")
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = index_folders(library, [folder], [ClaimsDevice(tiny_model, device)], IndexOptions(workers=1, batch_size=4))
    assert report.embedded == 11 and report.failed == 0
    assert set(decoded_on) == ({"cuda"} if batched else set())
    assert IndexOptions().gpu_decode == "auto"


def test_progress_on_a_terminal_draws_and_says_nothing_broke(tmp_path, tiny_weights, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    folder = photo_folder(tmp_path / "photos", 3, (160, 120), 150, "p{}.jpg")
    args = [
        "index",
        str(folder),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(tiny_weights),
        "--library",
        str(tmp_path / "lib"),
    ]
    for _ in range(2):  # the first run embeds, the second finds nothing to do
        outcome = CliRunner().invoke(main, args)
        assert outcome.exit_code == 0, outcome.output
        assert outcome.exception is None


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_copies_of_a_file_whose_decoder_hung_are_recorded_too(tmp_path, tiny_model, monkeypatch, workers):
    folder = photo_folder(tmp_path / "photos", 2, (160, 120), 160, "p{}.jpg")
    shutil.copy(folder / "p0.jpg", folder / "q-copy.jpg")
    release = threading.Event()
    real_decode = pipeline.decode_bytes

    def decode(path, *args):
        if Path(path).name in ("p0.jpg", "q-copy.jpg"):  # whichever of the two claims the content
            release.wait(30)
        return real_decode(path, *args)

    monkeypatch.setattr(pipeline, "decode_bytes", decode)
    report = index_folders(
        LibraryLayout.prepare(tmp_path / "lib"),
        [folder],
        [tiny_model],
        IndexOptions(workers=workers, batch_size=2, decode_timeout_s=1),
    )
    release.set()
    reasons = {Path(p).name: r for p, r in report.failures}
    assert reasons == {
        "p0.jpg": "reading and decoding took longer than 1 s",
        "q-copy.jpg": "reading and decoding took longer than 1 s",
    }
    assert report.embedded == 1 and (report.new, report.failed) == (3, 2)


@pytest.mark.parametrize("replacement", ["photo", "broken"])
def test_a_move_whose_old_path_gets_new_content_keeps_its_vector(tmp_path, tiny_model, replacement):
    """``mv a.jpg b.jpg; cp other a.jpg``: a.jpg's new content is committed first and its old
    content has no file for a moment; b.jpg, read meanwhile as "known", keeps the vector."""
    folder = photo_folder(tmp_path / "photos", 4, (160, 120), 170, "a{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index_folders(library, [folder], [tiny_model], IndexOptions(workers=1))
    before = stored_vectors(library)
    for i in range(4):
        (folder / f"a{i}.jpg").rename(folder / f"b{i}.jpg")
        if replacement == "photo":
            photo_like(160, 120, 180 + i).save(folder / f"a{i}.jpg")
        else:
            (folder / f"a{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 half written")
    report = index_folders(library, [folder], [tiny_model], IndexOptions(workers=1, batch_size=1))
    assert (report.copied, report.changed, report.new) == (4, 4, 4)  # the old paths still exist: copies
    after = stored_vectors(library)
    for i in range(4):
        np.testing.assert_array_equal(after[f"b{i}.jpg"], before[f"a{i}.jpg"])


@pytest.mark.slow
def test_a_folder_that_stops_answering_is_left_after_three_files(tmp_path, tiny_model, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 8, (160, 120), 190, "p{}.jpg")
    release = threading.Event()
    monkeypatch.setattr(pipeline, "read_file", lambda *args: release.wait(30))  # a share that hung
    report = index_folders(
        LibraryLayout.prepare(tmp_path / "lib"),
        [folder],
        [tiny_model],
        IndexOptions(workers=1, batch_size=2, decode_timeout_s=0.5),
    )
    release.set()
    assert report.failures[-1] == (
        str(folder),
        "stopped reading this folder: 3 files in a row took longer than 0.5 s (a hung drive or share?)",
    )
    assert report.failed == 3 and report.embedded == 0
    assert report.removed == 0  # nothing of a folder left half-read is forgotten


@pytest.mark.slow
def test_in_the_calling_thread_of_a_worker_thread_the_time_limit_still_holds(tmp_path, tiny_model, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 3, (160, 120), 200, "p{}.jpg")
    release = threading.Event()
    real_decode = pipeline.decode_bytes
    monkeypatch.setattr(
        pipeline,
        "decode_bytes",
        lambda path, *args: (release.wait(30) if path.endswith("p1.jpg") else None) or real_decode(path, *args),
    )
    reports = []
    worker = threading.Thread(
        target=lambda: reports.append(
            index_folders(
                LibraryLayout.prepare(tmp_path / "lib"),
                [folder],
                [tiny_model],
                IndexOptions(workers=0, batch_size=2, decode_timeout_s=1),
            )
        )
    )
    worker.start()
    worker.join(20)
    release.set()
    assert reports and reports[0].failures == [(str(folder / "p1.jpg"), "reading and decoding took longer than 1 s")]


def test_a_dry_run_leaves_no_thread_behind(tmp_path, tiny_model):
    folder = photo_folder(tmp_path / "photos", 2, (160, 120), 210, "p{}.jpg")
    for _ in range(3):
        index_folders(LibraryLayout.prepare(tmp_path / "lib"), [folder], [tiny_model], IndexOptions(dry_run=True))
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("dreamsearch-")]


def test_reading_reserves_the_file_not_the_size_limit(tmp_path):
    """``read(n)`` reserves n bytes at once: reading up to the 2 GiB limit for every photo
    would fail under a memory limit (ulimit -v, no overcommit) or on a small NAS."""
    (tmp_path / "small.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 5000)
    script = (
        "import resource, sys\n"
        "from dreamsearch.reading import read_file\n"
        "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 512 * 2**20, resource.RLIM_INFINITY))\n"
        f"read = read_file({str(tmp_path / 'small.jpg')!r})\n"
        "print(read.error or len(read.data))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "5003", result.stderr


def test_indexes_are_saved_at_most_once_a_minute_and_within_a_tenth_of_the_time(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(writer_module.time, "monotonic", lambda: now[0])
    schedule = writer_module.SaveSchedule()
    now[0] += 59
    assert not schedule.due()
    now[0] += 1
    assert schedule.due()
    schedule.saved(20.0)  # a save of a big index: the next one waits ten times as long
    now[0] += 199
    assert not schedule.due()
    now[0] += 1
    assert schedule.due()
