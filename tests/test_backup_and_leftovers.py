"""Trust, second pass: a backup that is what the library held and a restore that sticks
(a killed writer's WAL is never replayed over it), no temporary file left by a killed
save, and a pipe, socket or device named as such wherever a file is expected."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from dreamsearch.api import Library
from dreamsearch.layout import LibraryLayout
from tests.helpers.cli import invoke_as_user
from tests.helpers.images import photo_folder
from tests.helpers.indexing import index, stored_paths

MODEL = "dreamsim-dino"
REPO = Path(__file__).resolve().parents[1]


def two_folders(tmp_path: Path, tiny_model) -> tuple[LibraryLayout, Path, Path]:
    """A library of folder A (4 photos) and folder B (2 photos)."""
    a = photo_folder(tmp_path / "A", 4, (96, 72), 1, "a{}.jpg")
    b = photo_folder(tmp_path / "B", 2, (96, 72), 20, "b{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, a, tiny_model)
    index(library, b, tiny_model)
    return library, a, b


def like_results(tiny_weights: Path, library: LibraryLayout, path: Path) -> set[str]:
    result = invoke_as_user(tiny_weights, library.root, "query", "--like", str(path), "-m", MODEL, "-k", "20", "-0")
    assert result.exit_code == 0, result.stderr
    return {os.fsdecode(p) for p in result.stdout_bytes.split(b"\0")[:-1]}


def files_in(database: Path) -> int:
    connection = sqlite3.connect(database)
    try:
        return connection.execute("SELECT count(*) FROM files").fetchone()[0]
    finally:
        connection.close()


def leftovers(library: LibraryLayout) -> list[str]:
    return sorted(p.name for p in library.root.rglob("*.partial*"))


# backup and restore -----------------------------------------------------------------------


def test_restore_drops_a_stale_wal_so_the_library_holds_exactly_the_backup(tmp_path, tiny_model, tiny_weights):
    library, a, b = two_folders(tmp_path, tiny_model)
    backup = tmp_path / "backup.sqlite"
    result = invoke_as_user(tiny_weights, library.root, "backup", str(backup))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1 and str(backup) in result.stdout and "2 folders, 6 files" in result.stdout
    assert "need no backup" in result.stdout
    backed_up = stored_paths(library)
    assert len(backed_up) == 6

    # The library moves on (B's 2 photos forgotten, C's 1 added: the newer index lacks a
    # vector the backup has, whatever ids are reused), and its last writer is killed: the WAL of
    # its commits stays beside the catalog. (A reader kept open stops the writers' last close
    # from checkpointing it away; the copy put back afterwards is what a killed writer leaves.)
    keeper = sqlite3.connect(library.catalog_path)
    keeper.execute("SELECT count(*) FROM files").fetchone()
    with Library.open(library.root) as api:
        api.forget(b)
    c = photo_folder(tmp_path / "C", 1, (96, 72), 40, "c{}.jpg")
    index(library, c, tiny_model)
    wal = Path(f"{library.catalog_path}-wal")
    stale_wal = wal.read_bytes()
    keeper.close()
    wal.write_bytes(stale_wal)
    newer_index = tmp_path / "newer-index"
    shutil.copytree(library.index_dir, newer_index)

    # What `cp backup catalog.sqlite` gives: SQLite replays the WAL over the copied file.
    copied = tmp_path / "copied-lib"
    shutil.copytree(library.root, copied)
    shutil.copyfile(backup, copied / "catalog.sqlite")
    assert files_in(copied / "catalog.sqlite") == 5  # A and C: not the backup

    result = invoke_as_user(tiny_weights, library.root, "restore", str(backup))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "2 folders, 6 files" in result.stdout
    assert stored_paths(library) == backed_up
    status = invoke_as_user(tiny_weights, library.root, "status").stdout
    assert f"{a}: 4 images" in status and f"{b}: 2 images" in status and str(c) not in status
    expected = set(backed_up) - {str(a / "a0.jpg")}
    assert like_results(tiny_weights, library, a / "a0.jpg") == expected
    result = invoke_as_user(tiny_weights, library.root, "query", str(c / "c0.jpg"), "-m", MODEL, "-k", "20", "-0")
    assert {os.fsdecode(p) for p in result.stdout_bytes.split(b"\0")[:-1]} == set(backed_up)

    # The newer index put back (same catalog id, a later log): the chain check refuses it,
    # so readers answer from the restored catalog, never from that index.
    shutil.rmtree(library.index_dir)
    shutil.copytree(newer_index, library.index_dir)
    assert "built from another state of the catalog" in invoke_as_user(tiny_weights, library.root, "status").stdout
    assert like_results(tiny_weights, library, a / "a0.jpg") == expected


def test_backup_is_one_consistent_file_while_another_process_holds_the_writer_lock_mid_transaction(
    tmp_path, tiny_model, tiny_weights
):
    library, a, _b = two_folders(tmp_path, tiny_model)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""\
        import fcntl, sqlite3, sys
        lock = open({str(library.root / ".writer.lock")!r}, "a")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        db = sqlite3.connect({str(library.catalog_path)!r}, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM files")  # an index run's transaction, not committed yet
        print("writing", flush=True)
        sys.stdin.read()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline() == "writing\n"
        assert invoke_as_user(tiny_weights, library.root, "forget", str(a)).exit_code == 1  # the lock is really held
        result = invoke_as_user(tiny_weights, library.root, "backup", str(tmp_path))  # a folder: catalog.sqlite in it
        assert result.exit_code == 0, result.stderr
    finally:
        writer.communicate("", timeout=60)
    backup = tmp_path / "catalog.sqlite"
    assert files_in(backup) == 6  # committed state only
    connection = sqlite3.connect(backup)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    connection.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("catalog", ".catalog"))) == [
        "catalog.sqlite"
    ]
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # it lists every photo path
    result = invoke_as_user(tiny_weights, library.root, "restore", str(tmp_path))  # the folder it was written to
    assert result.exit_code == 0 and "2 folders, 6 files" in result.stdout, result.stderr


def test_backup_refuses_to_write_over_the_library_catalog_itself(tmp_path, tiny_model, tiny_weights):
    library, _a, _b = two_folders(tmp_path, tiny_model)
    before = library.catalog_path.read_bytes()
    for dest in (library.root, library.catalog_path):
        result = invoke_as_user(tiny_weights, library.root, "backup", str(dest))
        assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "own catalog" in result.stderr
    assert library.catalog_path.read_bytes() == before


def not_a_catalog(tmp_path: Path, kind: str, backup: Path) -> Path:
    path = tmp_path / f"{kind}.sqlite"
    if kind == "text":
        path.write_text("not a database\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "other database":
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE notes (text)")
        connection.commit()
        connection.close()
    elif kind == "truncated":
        path.write_bytes(backup.read_bytes()[: backup.stat().st_size // 2])
    elif kind == "folder":
        path.mkdir()
    elif kind == "live database":  # commits in a -wal beside it, which a copy of the file would miss
        shutil.copyfile(backup, path)
        Path(f"{path}-wal").write_bytes(b"\0" * 4096)
    return path


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("text", "not an SQLite database"),
        ("empty", "not an SQLite database"),
        ("other database", "not a dreamsearch catalog"),
        ("truncated", "damaged"),
        ("folder", "holds no catalog.sqlite"),
        ("live database", "in use or not closed cleanly"),
    ],
)
def test_restore_of_a_file_that_is_not_an_intact_catalog_is_one_line_and_changes_nothing(
    tmp_path, tiny_model, tiny_weights, kind, reason
):
    library, a, _b = two_folders(tmp_path, tiny_model)
    backup = tmp_path / "backup.sqlite"
    assert invoke_as_user(tiny_weights, library.root, "backup", str(backup)).exit_code == 0
    bad = not_a_catalog(tmp_path, kind, backup)
    before = library.catalog_path.read_bytes()
    result = invoke_as_user(tiny_weights, library.root, "restore", str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {bad}") and result.stderr.count("\n") == 1, result.stderr
    assert reason in result.stderr
    assert library.catalog_path.read_bytes() == before
    assert leftovers(library) == [] and len(like_results(tiny_weights, library, a / "a0.jpg")) == 5


def test_restore_refuses_while_an_index_run_holds_the_library(tmp_path, tiny_model, tiny_weights):
    library, _a, b = two_folders(tmp_path, tiny_model)
    backup = tmp_path / "backup.sqlite"
    assert invoke_as_user(tiny_weights, library.root, "backup", str(backup)).exit_code == 0
    with Library.open(library.root) as api:
        api.forget(b)
    before = library.catalog_path.read_bytes()
    with library.writer_lock():
        result = invoke_as_user(tiny_weights, library.root, "restore", str(backup))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: another dreamsearch is changing")
    assert library.catalog_path.read_bytes() == before


# a writer killed mid-save leaves nothing behind -------------------------------------------------


@pytest.mark.parametrize("killed_in", ["forget", "restore"])
def test_a_writer_killed_while_saving_leaves_a_partial_file_that_the_next_index_removes(
    tmp_path, tiny_model, tiny_weights, killed_in
):
    library, a, b = two_folders(tmp_path, tiny_model)
    backup = tmp_path / "backup.sqlite"
    assert invoke_as_user(tiny_weights, library.root, "backup", str(backup)).exit_code == 0
    if killed_in == "restore":
        with Library.open(library.root) as api:
            api.forget(b)
    before = stored_paths(library)
    # Killed after writing a staged file, before renaming it into place (like SIGKILL: no cleanup).
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""\
        import os
        import dreamsearch.atomic
        from dreamsearch.api import Library

        dreamsearch.atomic.fsync_file = lambda path: os._exit(9)
        with Library.open({str(library.root)!r}) as library:
            if {killed_in!r} == "forget":
                library.forget({str(b)!r})
            else:
                library.restore({str(backup)!r})
        """),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert child.returncode == 9, child.stderr
    expected = {"forget": (".dreamsim-dino.", ".faiss."), "restore": (".catalog.sqlite.",)}[killed_in]
    assert [name for name in leftovers(library) if all(part in name for part in expected)], leftovers(library)
    if killed_in == "restore":
        assert stored_paths(library) == before  # the library is as it was

    result = invoke_as_user(tiny_weights, library.root, "index", str(a), "-m", MODEL)
    assert result.exit_code == 0, result.stderr
    assert leftovers(library) == []


# a pipe, socket or device where a file is expected ------------------------------------------------


class Hung(Exception):
    """The command blocked (opening a FIFO waits for a writer forever)."""


@pytest.fixture
def no_hang():
    def hung(*_):
        raise Hung("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def special_file(request, tmp_path):
    """A FIFO, a listening Unix socket or a device, named like a photo."""
    if request.param == "device":
        yield Path(os.devnull)
        return
    folder = Path(tempfile.mkdtemp(prefix="ds"))  # a socket's path must be short
    path = folder / "q.jpg"
    listener = None
    if request.param == "fifo":
        os.mkfifo(path)
    else:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen()
    yield path
    if listener is not None:
        listener.close()
    shutil.rmtree(folder)


ENTRY_POINTS = {
    "query": ["query", "{path}", "-m", MODEL],
    "query --like": ["query", "--like", "{path}", "-m", MODEL],
    "compare": ["compare", "{path}", "--models", f"{MODEL},clip"],
    "compare --like": ["compare", "--like", "{path}", "--models", f"{MODEL},clip"],
    "embed": ["embed", "{path}", "-m", MODEL, "-o", "{out}"],  # no --library: see run()
    "restore": ["restore", "{path}"],
}


def run(tiny_weights: Path, library: Path, *args: str):
    """Any command: ``embed`` needs no library, so it has no ``--library``."""
    return invoke_as_user(tiny_weights, None if args[0] == "embed" else library, *args)


@pytest.mark.parametrize("special_file", ["fifo", "socket", "device"], indirect=True)
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_pipe_socket_or_device_is_named_as_such_in_one_line_and_never_waited_on(
    tmp_path, tiny_model, tiny_weights, no_hang, special_file, entry
):
    # --like looks the path up in a library; the others check it before opening one
    library = two_folders(tmp_path, tiny_model)[0] if "--like" in entry else LibraryLayout(tmp_path / "lib")
    args = [arg.format(path=special_file, out=tmp_path / "out.npy") for arg in ENTRY_POINTS[entry]]
    result = run(tiny_weights, library.root, *args)
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if str(special_file) in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"{special_file}: not a regular file (a pipe, socket or device)"), lines
