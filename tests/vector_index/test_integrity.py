"""A saved FAISS index is only used for the exact catalog state it was built from, and only
while its bytes are intact: a restored or re-created catalog, a flipped vector, random
garbage or a truncated file all lead to a rebuild, and ``status`` says what it found."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dreamsearch.catalog import Catalog, FileEntry
from dreamsearch.layout import LibraryLayout
from dreamsearch.status import catalog_status, status_lines
from dreamsearch.vector_index import IndexFileError, VectorIndex, open_index
from dreamsearch.vector_index.recall import clustered_unit_vectors
from dreamsearch.vector_index.sync import load_checked

DIM = 32


def status_of(library: LibraryLayout) -> list[str]:
    """What ``dreamsearch status`` prints about ``library`` (every index byte checked)."""
    with Catalog(library.catalog_path, read_only=True) as catalog:
        return status_lines(catalog_status(library, catalog))


def entries(start: int, count: int, vectors: np.ndarray, tag: str = "") -> tuple[list[FileEntry], dict]:
    files = [FileEntry(f"{tag}{i}.jpg", 100, i, f"{tag}hash{i}") for i in range(start, start + count)]
    return files, {"m": {f.content_hash: vectors[i] for i, f in zip(range(start, start + count), files, strict=True)}}


def exact_top(catalog: Catalog, model, queries: np.ndarray, k: int) -> list[list[int]]:
    ids, vectors = catalog.vectors_for(model, catalog.vector_ids(model))
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order].tolist()


def index_top(index: VectorIndex, queries: np.ndarray, k: int) -> list[list[int]]:
    return index.search(queries, k)[1].tolist()


def assert_answers_for(catalog: Catalog, model, index: VectorIndex) -> None:
    """Every stored vector, used as a query, finds the same top 10 as exact search over the
    catalog: the index holds the catalog's current vectors, not only its ids."""
    _ids, queries = catalog.vectors_for(model, catalog.vector_ids(model))
    assert index_top(index, queries, 10) == exact_top(catalog, model, queries, 10)


@pytest.fixture
def vectors() -> tuple[np.ndarray, np.ndarray]:
    """Two unrelated collections: what the library held, and what arrived later."""
    return (clustered_unit_vectors(200, DIM, centres=8, seed=1), clustered_unit_vectors(200, DIM, centres=8, seed=2))


def copy_catalog(source, target) -> None:
    for suffix in ("", "-wal", "-shm"):
        if (source.parent / (source.name + suffix)).exists():
            shutil.copy(source.parent / (source.name + suffix), target.parent / (target.name + suffix))


def test_an_index_built_after_the_catalog_was_restored_from_a_copy_is_rebuilt(tmp_path, vectors):
    """The issue's reproduction: index 30, copy the catalog aside, add 20, put the copy back,
    add 45 others. Content ids 31-50 now mean other photos than the saved index holds."""
    old, new = vectors
    path, folder = tmp_path / "catalog.sqlite", tmp_path / "index"
    with Catalog(path) as catalog:
        model = catalog.ensure_model("m", DIM, "fp")
        root = catalog.attach(tmp_path).id
        catalog.commit_batch(root, *entries(0, 30, old))
        open_index(catalog, model, folder, writable=True)
    copy_catalog(path, tmp_path / "aside.sqlite")
    with Catalog(path) as catalog:
        catalog.commit_batch(root, *entries(30, 20, old))
        assert len(open_index(catalog, model, folder, writable=True)) == 50
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    copy_catalog(tmp_path / "aside.sqlite", path)
    with Catalog(path) as catalog:
        catalog.commit_batch(root, *entries(30, 45, new, tag="other"))
        assert catalog.last_seq(model) > 50  # so a catch-up from seq 50 would look plausible
        with pytest.raises(IndexFileError, match="another state of the catalog"):
            load_checked(catalog, model, folder)
        assert_answers_for(catalog, model, open_index(catalog, model, folder))  # a reader
        assert_answers_for(catalog, model, open_index(catalog, model, folder, writable=True))
        load_checked(catalog, model, folder, verify="full")  # the rebuilt index was saved


def test_an_index_of_a_deleted_and_recreated_catalog_is_rebuilt(tmp_path, vectors):
    old, new = vectors
    path, folder = tmp_path / "catalog.sqlite", tmp_path / "index"
    with Catalog(path) as catalog:
        model = catalog.ensure_model("m", DIM, "fp")
        catalog.commit_batch(catalog.attach(tmp_path).id, *entries(0, 50, old))
        open_index(catalog, model, folder, writable=True)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    with Catalog(path) as catalog:
        model = catalog.ensure_model("m", DIM, "fp")
        catalog.commit_batch(catalog.attach(tmp_path).id, *entries(0, 60, new))
        with pytest.raises(IndexFileError, match="another catalog"):
            load_checked(catalog, model, folder)
        assert_answers_for(catalog, model, open_index(catalog, model, folder, writable=True))


@pytest.fixture
def saved(tmp_path):
    """A library of 3,000 vectors (a flat index of ~400 KiB) with its index saved."""
    data = clustered_unit_vectors(3000, DIM, centres=20, seed=3)
    library = LibraryLayout.prepare(tmp_path / "library")
    catalog = Catalog(library.catalog_path)
    model = catalog.ensure_model("m", DIM, "fp")
    catalog.commit_batch(catalog.attach(tmp_path).id, *entries(0, 3000, data))
    index = open_index(catalog, model, library.index_dir, writable=True)
    yield catalog, model, library, library.index_dir / index.meta.file, data
    catalog.close()


def test_one_negated_vector_inside_the_file_is_found_by_writers_and_status(saved):
    catalog, model, library, faiss_file, data = saved
    raw = bytearray(faiss_file.read_bytes())
    victim = 1500
    at = raw.find(data[victim].tobytes())
    assert 65536 < at < len(raw) - 65536  # in the middle: only the full checksum sees it
    raw[at : at + DIM * 4] = (-data[victim]).tobytes()
    faiss_file.write_bytes(bytes(raw))
    assert VectorIndex.load(library.index_dir, "m").search(data[victim], 1)[1][0, 0] != victim + 1  # really wrong

    assert any("checksum mismatch" in line for line in status_of(library))
    index = open_index(catalog, model, library.index_dir, writable=True)
    assert index.search(data[victim], 1)[1][0, 0] == catalog.vectors_for(model, [victim + 1])[0][0]
    assert not any("NOT USABLE" in line for line in status_of(library))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted", "header"])
def test_damaged_files_are_noticed_by_readers_too_and_rebuilt(saved, damage):
    catalog, model, library, faiss_file, data = saved
    raw = faiss_file.read_bytes()
    if damage == "garbage":
        faiss_file.write_bytes(raw[:2000] + np.random.default_rng(0).bytes(len(raw) - 4000) + raw[-2000:])
    elif damage == "truncated":
        faiss_file.write_bytes(raw[: len(raw) // 2])
    elif damage == "header":
        faiss_file.write_bytes(raw[:8] + b"\xff\xff\xff\x7f" + raw[12:])  # ntotal
    else:
        faiss_file.unlink()
    status = "\n".join(status_of(library))
    assert "NOT USABLE" in status and "checksum ok" not in status
    reader = open_index(catalog, model, library.index_dir)
    assert_answers_for(catalog, model, reader)
    found = reader.search(data, 20)[1]
    assert (found >= 0).all()  # the issue saw 4 results instead of 20
    open_index(catalog, model, library.index_dir, writable=True)
    assert "checksum ok" in "\n".join(status_of(library))


def test_a_full_disk_while_saving_an_index_is_one_error_and_leaves_nothing(saved, monkeypatch):
    import faiss

    from dreamsearch.errors import DreamsearchError

    catalog, model, library, faiss_file, _data = saved
    catalog.remove_files(catalog.roots().popitem()[0], ["1.jpg"])  # something to save

    def full(index, path):
        with open(path, "wb") as handle:
            handle.write(b"x" * 100)
        raise RuntimeError("Error in faiss::FileIOWriter::operator()\nwrite error: No space left on device")

    monkeypatch.setattr(faiss, "write_index", full)
    with pytest.raises(DreamsearchError, match="No space left on device"):
        open_index(catalog, model, library.index_dir, writable=True)
    assert sorted(p.name for p in library.index_dir.iterdir()) == sorted(["m.json", faiss_file.name])
    monkeypatch.undo()
    assert_answers_for(catalog, model, open_index(catalog, model, library.index_dir, writable=True))
