"""The catalog: created and migrated on open, one transaction per batch, copies share
vectors, and a process killed mid-batch leaves a consistent, resumable library."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3

import numpy as np
import pytest
from sqlalchemy import text

from dreamsearch.catalog import Catalog, FileEntry
from dreamsearch.catalog.database import SchemaTooNewError, create_catalog_engine, head_revision, upgrade
from dreamsearch.errors import DreamsearchError
from dreamsearch.layout import LibraryLayout
from dreamsearch.vector_index import open_index

DIM = 8


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def batch(start: int, count: int) -> tuple[list[FileEntry], dict]:
    files = [
        FileEntry(f"img{i:04d}.jpg", 100 + i, 10 * i, f"hash{i:04d}", 640, 480, "JPEG")
        for i in range(start, start + count)
    ]
    return files, {"m": {f.content_hash: unit(i) for i, f in zip(range(start, start + count), files, strict=True)}}


def put_on_disk(folder, relpath: str, size: int, mtime_ns: int) -> None:
    """A real file as an entry describes it: results only name files on disk as indexed."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def catalog(tmp_path):
    with Catalog(tmp_path / "catalog.sqlite") as cat:
        cat.ensure_model("m", DIM, "weights-1")
        yield cat


def test_created_catalog_is_wal_with_foreign_keys_and_reopens(tmp_path):
    path = tmp_path / "catalog.sqlite"
    with Catalog(path) as cat:
        cat.ensure_model("m", DIM, "weights-1")
        root = cat.attach(tmp_path).id
        files, vectors = batch(0, 3)
        cat.commit_batch(root, files, vectors)
        with cat.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    with Catalog(path) as cat:
        model = cat.model("m")
        ids, stored = cat.vectors_for(model, cat.vector_ids(model))
        assert len(ids) == 3
        np.testing.assert_array_equal(stored, np.stack([unit(0), unit(1), unit(2)]))
        with cat.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()


def test_copies_share_one_vector_and_orphans_are_removed(catalog, tmp_path):
    model = catalog.model("m")
    root = catalog.attach(tmp_path).id
    catalog.commit_batch(
        root, [FileEntry("a.jpg", 5, 1, "same"), FileEntry("copy/a.jpg", 5, 2, "same")], {"m": {"same": unit(1)}}
    )
    assert catalog.count_vectors(model) == 1
    [content_id] = catalog.vector_ids(model)
    assert catalog.paths_of([content_id]) == {}  # neither file is on disk
    put_on_disk(tmp_path, "a.jpg", 5, 1)
    put_on_disk(tmp_path, "copy/a.jpg", 5, 99)  # changed since it was indexed
    assert catalog.paths_of([content_id])[content_id] == [str(tmp_path / "a.jpg")]
    put_on_disk(tmp_path, "copy/a.jpg", 5, 2)
    assert catalog.paths_of([content_id])[content_id] == [str(tmp_path / "a.jpg"), str(tmp_path / "copy/a.jpg")]
    catalog.remove_files(root, ["a.jpg"])
    assert catalog.count_vectors(model) == 1
    catalog.remove_files(root, ["copy/a.jpg"])
    assert catalog.count_vectors(model) == 0
    assert [(e.content_id, e.op) for e in catalog.changes_since(model, 0)] == [
        (content_id, "add"),
        (content_id, "remove"),
    ]


def test_deferred_orphans_keep_their_vectors_until_the_end_of_a_run(catalog, tmp_path):
    """An indexer may replace the only file of a content and record a copy of it later in
    the same run: the content must survive until the run's end, and a run that died before
    its sweep leaves a note so the next one sweeps everything."""
    model = catalog.model("m")
    root = catalog.attach(tmp_path).id
    catalog.commit_batch(root, [FileEntry("a.jpg", 5, 1, "old")], {"m": {"old": unit(1)}})
    [old_id] = catalog.vector_ids(model)
    assert catalog.defer_orphans() is False
    replaced = catalog.commit_batch(
        root, [FileEntry("a.jpg", 6, 2, "new")], {"m": {"new": unit(2)}}, drop_orphans=False
    )
    assert replaced == {old_id} and catalog.count_vectors(model) == 2
    catalog.commit_batch(root, [FileEntry("b.jpg", 5, 3, "old")], drop_orphans=False)  # the move's new path
    catalog.drop_orphans(replaced)
    assert catalog.count_vectors(model) == 2  # still referenced by b.jpg
    catalog.commit_batch(root, [FileEntry("b.jpg", 7, 4, "newer")], {"m": {"newer": unit(3)}}, drop_orphans=False)
    assert catalog.defer_orphans() is False  # the sweep above cleared the note
    assert catalog.defer_orphans() is True  # ... and a run that died leaves it
    catalog.drop_orphans()  # everything no file refers to
    assert catalog.count_vectors(model) == 2
    assert [e.op for e in catalog.changes_since(model, 0) if e.content_id == old_id] == ["add", "remove"]


def test_failed_files_are_recorded_with_their_reason(catalog, tmp_path):
    root = catalog.attach(tmp_path).id
    catalog.commit_batch(root, [FileEntry("broken.jpg", 0, 1, None, error="empty file")])
    with catalog.engine.connect() as connection:
        row = connection.execute(text("SELECT status, error, content_id FROM files")).one()
    assert tuple(row) == ("failed", "empty file", None)


def test_other_weights_under_the_same_name_are_refused(catalog):
    with pytest.raises(DreamsearchError, match="other weights"):
        catalog.ensure_model("m", DIM, "weights-2")


def test_upgrade_from_the_first_revision_keeps_data_and_logs_it(tmp_path):
    path = tmp_path / "catalog.sqlite"
    engine = create_catalog_engine(path)
    upgrade(engine, path, target="0001")
    vectors = [unit(7), unit(8)]
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO roots VALUES (1, :p, '2025-01-01 00:00:00')"), {"p": str(tmp_path)})
        connection.execute(
            text("INSERT INTO models VALUES (1, 'm', :d, 'weights-1', 'float32', '2025-01-01 00:00:00')"), {"d": DIM}
        )
        for i, vector in enumerate(vectors, start=1):
            connection.execute(text("INSERT INTO contents VALUES (:i, :h, 10, 4, 3, 'PNG')"), {"i": i, "h": f"h{i}"})
            connection.execute(
                text("INSERT INTO files VALUES (:i, 1, :p, 10, 1, :i, 'ok', NULL, '2025-01-01', '2025-01-01')"),
                {"i": i, "p": f"f{i}.png"},
            )
            connection.execute(text("INSERT INTO vectors VALUES (:i, 1, :b)"), {"i": i, "b": vector.tobytes()})
    engine.dispose()

    with Catalog(path) as cat:
        model = cat.model("m")
        assert [(e.content_id, e.op) for e in cat.changes_since(model, 0)] == [(1, "add"), (2, "add")]
        index = open_index(cat, model, tmp_path / "index", writable=True)
        scores, ids = index.search(np.stack(vectors), 1)
        assert ids[:, 0].tolist() == [1, 2]
        put_on_disk(tmp_path, "f1.png", 10, 1)
        assert cat.paths_of([1])[1] == [str(tmp_path / "f1.png")]


def test_a_catalog_from_a_newer_dreamsearch_is_refused_untouched(tmp_path):
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00d'")
    before = path.read_bytes()
    with pytest.raises(SchemaTooNewError, match="newer than this dreamsearch"):
        Catalog(path)
    assert path.read_bytes() == before


def _commit_then_die(path: str, die_after_vectors: bool) -> None:
    """Child process: commit two batches, then be killed inside the third transaction,
    before or after its vectors are written."""
    cat = Catalog(path)
    cat.ensure_model("m", DIM, "weights-1")
    root = cat.attach(os.path.dirname(path)).id
    for start in (0, 10):
        cat.commit_batch(root, *batch(start, 10))
    original = Catalog._put_vectors

    def dying(*args):
        if die_after_vectors:
            original(*args)
        os._exit(9)  # like SIGKILL: no cleanup, no rollback, no commit

    Catalog._put_vectors = staticmethod(dying)
    cat.commit_batch(root, *batch(20, 10))


@pytest.mark.parametrize("die_after_vectors", [False, True])
def test_killed_mid_batch_loses_only_that_batch_and_resumes(tmp_path, die_after_vectors):
    path = tmp_path / "catalog.sqlite"
    child = multiprocessing.get_context("spawn").Process(target=_commit_then_die, args=(str(path), die_after_vectors))
    child.start()
    child.join(60)
    assert child.exitcode == 9

    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    with Catalog(path) as cat:
        model = cat.model("m")
        assert cat.count_vectors(model) == 20
        with cat.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM files")).scalar() == 20
        assert len(cat.changes_since(model, 0)) == 20
        root = cat.attach(tmp_path).id
        cat.commit_batch(root, *batch(20, 10))  # resume
        assert cat.count_vectors(model) == 30
        index = open_index(cat, model, tmp_path / "index", writable=True)
        assert index.ids().tolist() == sorted(cat.vector_ids(model).tolist())


def test_library_folder_manifest(tmp_path):
    folder = LibraryLayout.prepare(tmp_path / "lib")
    assert folder.manifest_path.exists() and folder.index_dir.is_dir()
    assert LibraryLayout.prepare(tmp_path / "lib") == folder
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.jpg").write_bytes(b"x")
    with pytest.raises(DreamsearchError, match="not a dreamsearch library"):
        LibraryLayout.prepare(tmp_path / "photos")


def test_library_location_flag_then_environment_then_user_folder(tmp_path, monkeypatch):
    from dreamsearch.layout import library_dir

    monkeypatch.setenv("DREAMSEARCH_LIBRARY", str(tmp_path / "env"))
    assert library_dir(tmp_path / "flag") == tmp_path / "flag"
    assert library_dir() == tmp_path / "env"
    monkeypatch.delenv("DREAMSEARCH_LIBRARY")
    assert library_dir().name == "library" and "dreamsearch" in str(library_dir())


def test_nested_roots_left_by_an_older_version_merge_when_the_parent_is_indexed(catalog, tmp_path):
    """Before nesting was handled, `index A` then `index A/inner` stored the inner files
    twice (once per root). Indexing A again must leave one row per file on disk."""
    outer = catalog.attach(tmp_path).id
    with catalog.engine.connect() as connection, connection.begin():
        connection.execute(
            text("INSERT INTO roots (path, added_at) VALUES (:p, '2025-01-01')"), {"p": str(tmp_path / "inner")}
        )
        inner = connection.execute(
            text("SELECT id FROM roots WHERE path = :p"), {"p": str(tmp_path / "inner")}
        ).scalar()
    files, vectors = batch(0, 3)
    catalog.commit_batch(
        outer, [FileEntry("inner/" + f.relpath, f.size, f.mtime_ns, f.content_hash) for f in files], vectors
    )
    catalog.commit_batch(inner, files + [FileEntry("only-here.jpg", 7, 7, "lone")], {"m": {"lone": unit(9)}})
    assert len(catalog.roots()) == 2

    place = catalog.attach(tmp_path)
    assert (place.id, place.prefix) == (outer, "")
    assert list(catalog.roots()) == [outer]
    assert sorted(catalog.files_under(outer)) == [
        "inner/img0000.jpg",
        "inner/img0001.jpg",
        "inner/img0002.jpg",
        "inner/only-here.jpg",
    ]
    assert catalog.count_vectors(catalog.model("m")) == 4


def test_the_newest_migration_file_is_alembics_head():
    """Opening an up-to-date catalog compares its stamp with the newest file's revision, so
    Alembic is imported only to migrate: the file names must name the head."""
    from dreamsearch.catalog.database import newest_revision

    assert newest_revision() == head_revision()


def test_opening_an_up_to_date_catalog_does_not_import_alembic(tmp_path):
    import subprocess
    import sys

    Catalog(tmp_path / "catalog.sqlite").close()  # made and migrated here
    probe = (
        "import sys; from pathlib import Path; from dreamsearch.catalog import Catalog\n"
        f"Catalog(Path({str(tmp_path / 'catalog.sqlite')!r}), read_only=True).close()\n"
        "print('alembic' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_a_new_catalog_is_what_the_migrations_build_and_needs_no_alembic(tmp_path):
    """A new catalog is built straight from ``schema`` (Alembic's import and migrations took
    0.14 s of every new library's start); new and migrated libraries must never differ."""
    import subprocess
    import sys

    new, migrated = tmp_path / "new.sqlite", tmp_path / "migrated.sqlite"
    probe = (
        f"import sys; from dreamsearch.catalog import Catalog; Catalog({str(new)!r}).close()\n"
        "print('alembic' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
    engine = create_catalog_engine(migrated)
    upgrade(engine, migrated, target=head_revision())  # a revision by name: through Alembic's migrations
    engine.dispose()
    assert _schema(new) == _schema(migrated)
    ids = []
    for path in (new, migrated):
        with sqlite3.connect(path) as connection:
            ids += connection.execute("SELECT value FROM catalog_info WHERE key = 'catalog_id'").fetchall()
    assert len(ids) == 2 and ids[0] != ids[1] and len(ids[0][0]) == 32  # each catalog its own random id
    with Catalog(new) as catalog:  # and it works as a catalog
        catalog.ensure_model("m", 4, "fp")
        assert catalog.model("m").dim == 4


def _schema(path) -> dict:
    """Each table's columns, indexes and foreign keys (not their order), the stamp table's
    DDL and revision, and the catalog facts kept."""
    with sqlite3.connect(path) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        schema: dict = {
            table: (
                sorted(row[1:] for row in connection.execute(f"PRAGMA table_info('{table}')")),
                sorted(
                    (row[1], row[2], row[3], [c[2] for c in connection.execute(f"PRAGMA index_info('{row[1]}')")])
                    for row in connection.execute(f"PRAGMA index_list('{table}')")
                ),
                sorted(row[2:] for row in connection.execute(f"PRAGMA foreign_key_list('{table}')")),
            )
            for table in tables
            if table != "sqlite_sequence"  # SQLite's own, filled as rows come
        }
        schema["alembic_version DDL"] = connection.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'alembic_version'"
        ).fetchall()
        schema["stamp"] = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        schema["catalog_info"] = sorted(row[0] for row in connection.execute("SELECT key FROM catalog_info"))
        schema["triggers and views"] = connection.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
        ).fetchall()
    return schema
