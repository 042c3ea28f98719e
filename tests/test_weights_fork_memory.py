"""Trust, second pass: weights told apart by every byte, a forked child that never hangs,
and low memory reported in one line (issue "Trust, second pass", items 3, 7 and 8)."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dreamsearch.models.weights as weights_module
from dreamsearch.api import Library, Page
from dreamsearch.catalog import Catalog
from dreamsearch.errors import DreamsearchError
from dreamsearch.indexer import IndexOptions
from dreamsearch.layout import LibraryLayout
from dreamsearch.low_memory import out_of_memory_message
from dreamsearch.models.registry import get_spec
from dreamsearch.models.weights import fingerprint
from tests.helpers import official_layout
from tests.helpers.cli import invoke_as_user
from tests.helpers.images import photo_folder

MODEL = "dreamsim-dino"
BACKBONE = "checkpoints/dino_vitbase16_pretrain.pth"
MIB = 1 << 20
REPO = Path(__file__).resolve().parents[1]


def matches(page: Page) -> list[tuple[str, float]]:
    return [(m.path, round(m.distance, 5)) for m in page.matches]


# 3. weights with the same edges ---------------------------------------------------------


@pytest.fixture(scope="module")
def wide_weights(tmp_path_factory) -> Path:
    """A DreamSim-DINO whose backbone file (3.7 MB) has tensors beyond its first and last MiB."""
    return official_layout.write_tiny_cache(tmp_path_factory.mktemp("wide_weights"), width=128, depth=4)


def middle_tensor_changed(weights: Path, out: Path) -> Path:
    """A copy of ``weights`` whose backbone has one tensor in the middle of the file negated:
    same size, same first and last MiB, other vectors."""
    shutil.copytree(weights, out)
    checkpoint = out / BACKBONE
    tensor = torch.load(checkpoint, weights_only=True)["blocks.1.attn.qkv.weight"]
    data = checkpoint.read_bytes()
    start = data.index(tensor.numpy().tobytes())
    checkpoint.write_bytes(data[:start] + (-tensor).numpy().tobytes() + data[start + tensor.numel() * 4 :])
    return out


def test_weights_that_differ_only_in_a_tensor_in_the_middle_get_different_fingerprints(tmp_path, wide_weights):
    other = middle_tensor_changed(wide_weights, tmp_path / "other")
    before, after = (wide_weights / BACKBONE).read_bytes(), (other / BACKBONE).read_bytes()
    assert len(before) == len(after) and before != after
    assert before[:MIB] == after[:MIB] and before[-MIB:] == after[-MIB:]
    spec = get_spec(MODEL)
    assert fingerprint(spec, wide_weights) != fingerprint(spec, other)
    assert fingerprint(spec, wide_weights).startswith("sha256:")


def test_a_library_refuses_to_index_or_query_with_weights_that_differ_in_the_middle(tmp_path, wide_weights):
    other = middle_tensor_changed(wide_weights, tmp_path / "other")
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 1, "p{}.jpg")
    with Library.open(tmp_path / "lib", weights_dir=wide_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
        assert matches(library.search(library.query(photos / "p0.jpg", model=MODEL), k=1, include_self=True)) == [
            (str(photos / "p0.jpg"), 0.0)
        ]
    photo_folder(photos, 1, (96, 72), 7, "new{}.jpg")

    with Library.open(tmp_path / "lib", weights_dir=other, device="cpu") as library:
        with pytest.raises(DreamsearchError, match="vectors from other weights") as refused:
            library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
        assert "\n" not in str(refused.value)
        with pytest.raises(DreamsearchError, match="other weights"):
            library.query(photos / "p0.jpg", model=MODEL)

    for command in (["index", str(photos), "-m", MODEL], ["query", str(photos / "p0.jpg"), "-m", MODEL]):
        result = invoke_as_user(other, tmp_path / "lib", *command)
        assert result.exit_code == 1
        assert len(result.stderr.splitlines()) == 1 and "other weights" in result.stderr
    with Catalog(LibraryLayout(tmp_path / "lib").catalog_path) as catalog:
        assert catalog.count_vectors(catalog.model(MODEL)) == 3  # nothing of the other weights went in


def fingerprint_in_new_process(weights: Path) -> tuple[str, int]:
    """The fingerprint as another process computes it, and how many bytes it read for it."""
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from dreamsearch.models.registry import get_spec\n"
        "from dreamsearch.models.weights import fingerprint\n"
        "def read(): return int(dict(l.split(': ') for l in open('/proc/self/io').read().splitlines())['rchar'])\n"
        "spec = get_spec(sys.argv[2]); before = read()\n"
        "print(fingerprint(spec, Path(sys.argv[1])), read() - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(weights), MODEL], capture_output=True, text=True, cwd=REPO, check=True
    )
    value, read = done.stdout.split()
    return value, int(read)


def test_the_whole_file_hash_is_read_once_and_again_when_a_file_is_touched_or_replaced(tmp_path, wide_weights):
    weights = shutil.copytree(wide_weights, tmp_path / "weights")
    checkpoint = weights / BACKBONE
    size = checkpoint.stat().st_size
    first, read = fingerprint_in_new_process(weights)
    assert read >= size  # every byte
    again, read = fingerprint_in_new_process(weights)
    assert again == first and read < size / 10  # the cache, not the weights

    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    touched, read = fingerprint_in_new_process(weights)
    assert touched == first and read >= size

    stamp = checkpoint.stat()  # other bytes, same size and mtime, in a file put in its place
    expected = fingerprint(get_spec(MODEL), middle_tensor_changed(weights, tmp_path / "changed"))
    os.replace(tmp_path / "changed" / BACKBONE, checkpoint)
    os.utime(checkpoint, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert checkpoint.stat().st_size == size
    replaced, read = fingerprint_in_new_process(weights)
    assert replaced == expected != first and read >= size


def test_weights_in_a_folder_that_cannot_be_written_still_get_their_fingerprint(tmp_path, tiny_weights, monkeypatch):
    weights = shutil.copytree(tiny_weights, tmp_path / "weights")
    (weights / weights_module.HASHES).unlink(missing_ok=True)  # as if never hashed here

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights_module, "write_atomically", refuse)
    assert fingerprint(get_spec(MODEL), weights) == fingerprint(get_spec(MODEL), tiny_weights)
    assert not (weights / weights_module.HASHES).exists()


def test_a_library_made_with_the_old_fingerprint_keeps_working_and_is_restamped(tmp_path, tiny_weights, monkeypatch):
    photos = photo_folder(tmp_path / "photos", 4, (96, 72), 1, "p{}.jpg")
    with monkeypatch.context() as old_version:  # what dreamsearch 0.1 made: legacy fingerprints
        old_version.setattr(weights_module, "fingerprint", weights_module.legacy_fingerprint)
        with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
            library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
            expected = matches(library.search(library.query(photos / "p1.jpg", model=MODEL), k=4, include_self=True))
    catalog_path = LibraryLayout(tmp_path / "lib").catalog_path
    legacy = weights_module.legacy_fingerprint(get_spec(MODEL), tiny_weights)
    with Catalog(catalog_path) as catalog:
        assert catalog.model(MODEL).fingerprint == legacy

    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:  # a reader
        assert (
            matches(library.search(library.query(photos / "p1.jpg", model=MODEL), k=4, include_self=True)) == expected
        )
    with Catalog(catalog_path) as catalog:
        assert catalog.model(MODEL).fingerprint == legacy

    photo_folder(photos, 1, (96, 72), 9, "new{}.jpg")
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:  # a writer
        report = library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
        assert (report.new, report.embedded, report.unchanged) == (1, 1, 4)
        found = matches(library.search(library.query(photos / "p1.jpg", model=MODEL), k=5, include_self=True))
        assert [m for m in found if "new" not in m[0]] == expected and len(found) == 5
    with Catalog(catalog_path) as catalog:
        assert catalog.model(MODEL).fingerprint == fingerprint(get_spec(MODEL), tiny_weights)
    meta = json.loads((LibraryLayout(tmp_path / "lib").index_dir / f"{MODEL}.json").read_text())
    assert meta["fingerprint"] == fingerprint(get_spec(MODEL), tiny_weights)


def test_a_library_with_the_old_fingerprint_of_other_weights_is_still_refused(tmp_path, wide_weights):
    other = middle_tensor_changed(wide_weights, tmp_path / "other")
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    with Library.open(tmp_path / "lib", weights_dir=wide_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    with sqlite3.connect(LibraryLayout(tmp_path / "lib").catalog_path) as db:  # as 0.1 stored it, from other bytes
        db.execute("UPDATE models SET fingerprint = ?", ("0" * 64,))
    with Library.open(tmp_path / "lib", weights_dir=other, device="cpu") as library:
        with pytest.raises(DreamsearchError, match="vectors from other weights"):
            library.index([photos], models=[MODEL], options=IndexOptions(workers=1))


# 7. fork -------------------------------------------------------------------------------


def _query_in_child(library_path: Path, weights: Path, photo: Path, out: Path) -> None:
    with Library.open(library_path, weights_dir=weights, device="cpu") as library:
        similar = matches(library.search(library.query(like=photo, model=MODEL), k=5))  # FAISS first
        found = matches(library.search(library.query(photo, model=MODEL), k=5))  # then torch
    out.write_text(json.dumps([similar, found]))


def test_a_forked_child_queries_like_its_parent_instead_of_hanging(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 40, (96, 72), 1, "p{}.jpg")
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))  # torch's and FAISS's threads run here
        expected = [
            matches(library.search(library.query(like=photos / "p0.jpg", model=MODEL), k=5)),
            matches(library.search(library.query(photos / "p0.jpg", model=MODEL), k=5)),
        ]
    out = tmp_path / "child.json"
    child = multiprocessing.get_context("fork").Process(
        target=_query_in_child, args=(tmp_path / "lib", tiny_weights, photos / "p0.jpg", out)
    )
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung, "the forked child hung"
    assert child.exitcode == 0
    assert [[tuple(m) for m in result] for result in json.loads(out.read_text())] == expected


# 8. low memory -------------------------------------------------------------------------

#: Enough address space to start and open the library, too little to map torch's libraries
#: (libtorch_cpu.so alone is over 400 MB).
TOO_LITTLE = 600 * MIB


def test_too_little_memory_for_the_model_is_one_line_naming_the_limit_and_keeps_the_work_done(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 1, "p{}.jpg")
    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        library.index([photos], models=[MODEL], options=IndexOptions(workers=1))
    photo_folder(photos, 2, (96, 72), 20, "new{}.jpg")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (TOO_LITTLE, TOO_LITTLE))

    env = dict(os.environ, DREAMSEARCH_WEIGHTS=str(tiny_weights), HF_HUB_OFFLINE="1", DREAMSEARCH_OFFLINE="1")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamsearch",
            "index",
            str(photos),
            "--library",
            str(tmp_path / "lib"),
            "-m",
            MODEL,
            "--device",
            "cpu",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        preexec_fn=limited,
        timeout=300,
    )
    lines = run.stderr.splitlines()
    assert run.returncode == 1 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    line = lines[0]
    assert line.startswith("error: out of memory loading ")
    assert line.endswith("(address space limited to 600 MiB by ulimit -v; raise it or use a smaller model)")

    with Library.open(tmp_path / "lib", weights_dir=tiny_weights, device="cpu") as library:
        assert (
            len(library.search(library.query(like=photos / "p0.jpg", model=MODEL), k=10).matches) == 2
        )  # the earlier run's work
        report = library.index([photos], models=[MODEL], options=IndexOptions(workers=1))  # nothing locked or broken
        assert (report.new, report.embedded, report.unchanged) == (2, 2, 3)


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
            "you tried to allocate 9437184 bytes."
        ),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9437184 bytes. Error code 12"),
        ImportError("libtorch_cpu.so: failed to map segment from shared object"),
        OSError("/usr/lib/libgomp.so.1: cannot allocate memory"),
        OSError(12, "Cannot allocate memory"),
    ],
)
def test_memory_exhaustion_is_told_in_one_line_with_the_limit(error, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (3 << 30, resource.RLIM_INFINITY))
    message = out_of_memory_message(error)
    assert message.startswith("out of memory") and "\n" not in message
    assert "address space limited to 3 GiB by ulimit -v; raise it or use a smaller model" in message


def test_without_a_limit_the_memory_message_says_what_to_do(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert out_of_memory_message(MemoryError()) == "out of memory (free some memory or use a smaller model)"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        ImportError("cannot import name 'thing' from 'module'"),
        OSError(2, "No such file or directory"),
        ValueError("not enough memory"),
    ],
)
def test_other_errors_are_not_mistaken_for_low_memory(error):
    assert out_of_memory_message(error) is None
