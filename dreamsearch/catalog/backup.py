"""Backing up and restoring a catalog.

A live catalog is more than ``catalog.sqlite``: committed transactions may still sit in
``catalog.sqlite-wal``, and SQLite replays any ``-wal`` it finds beside the file over it,
whoever left it there. So a ``cp`` of the file can miss commits, and a ``cp`` back over it
is silently undone by the WAL of a killed writer. Hence:

- a backup is taken with SQLite's online backup API, as a reader: one consistent snapshot
  even while an index run commits, written as a single self-contained file;
- a restore checks the file, removes the ``-wal`` and ``-shm`` and only then renames the
  copy into place (the caller holds the library's writer lock).

Only the catalog is copied: the FAISS index files are derived from it and rebuilt.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from dreamsearch.atomic import fsync_dir, staged_file
from dreamsearch.catalog.store import Catalog
from dreamsearch.errors import DreamsearchError
from dreamsearch.reading import NOT_REGULAR_FILE

#: Tables every catalog has had since its first schema (later ones come from migrations).
CATALOG_TABLES = frozenset({"alembic_version", "roots", "files", "contents", "models", "vectors"})
#: What SQLite keeps beside a database file while it is in use.
SIDE_FILES = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"


class BackupError(DreamsearchError):
    """A backup that cannot be written, or a file that cannot be restored as a catalog."""


@dataclass(frozen=True)
class CatalogCopy:
    """A catalog file written by ``backup_catalog`` or put in place by ``restore_catalog``."""

    path: Path
    size: int
    folders: int
    files: int


def backup_catalog(catalog: Path, dest: Path) -> CatalogCopy:
    """Copy ``catalog`` to ``dest`` (a file, or an existing folder: then ``catalog.sqlite``
    in it), atomically. It only reads, so it needs no writer lock and an index run goes on
    meanwhile. The copy is in rollback-journal mode, a single file with nothing beside it."""
    target = dest / catalog.name if dest.is_dir() else dest
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent}: no such folder")
    if target.resolve() == catalog.resolve():
        raise BackupError(f"{target} is the library's own catalog; back it up to another place")
    read_only = "?mode=ro" + ("" if os.access(catalog.parent, os.W_OK) else "&immutable=1")  # as Catalog readers
    uri = "file:" + quote(os.fsencode(catalog.resolve())) + read_only  # any bytes in the path, percent-encoded
    try:
        source = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            with staged_file(target) as staged:
                try:
                    copy = sqlite3.connect(staged)
                    try:
                        source.backup(copy)  # all pages in one step: one read transaction, one state
                        copy.execute("PRAGMA journal_mode=DELETE")
                        folders, files = _counts(copy)
                    finally:
                        copy.close()
                    staged.chmod(0o600)  # it lists every photo path, like the catalog
                finally:
                    _remove_side_files(staged)
        finally:
            source.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"cannot back up {catalog} to {target}: {exc}") from None
    except OSError as exc:
        raise BackupError(f"{target}: cannot write the backup ({exc.strerror or exc})") from None
    return CatalogCopy(target, target.stat().st_size, folders, files)


def backup_file(given: Path) -> Path:
    """The backup that ``given`` names: the file itself, or ``catalog.sqlite`` in a folder
    (where ``backup_catalog`` writes it), checked with ``check_backup_file``."""
    if given.is_dir():
        if not (given / "catalog.sqlite").exists():
            raise BackupError(f"{given} is a folder that holds no catalog.sqlite; give the backup file")
        given = given / "catalog.sqlite"
    check_backup_file(given)
    return given


def check_backup_file(backup: Path) -> None:
    """Refuse at once what cannot be a backup: a missing or special file, one that is not
    SQLite, or a database in use (a ``-wal`` beside it may hold commits a copy would miss)."""
    try:
        mode = backup.stat().st_mode
    except FileNotFoundError:
        raise BackupError(f"{backup}: no such file") from None
    except OSError as exc:
        raise BackupError(f"{backup}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise BackupError(f"{backup}: {NOT_REGULAR_FILE}")
    try:
        with open(backup, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise BackupError(f"{backup}: cannot read ({exc.strerror or exc})") from None
    if header != _SQLITE_HEADER:
        raise BackupError(f"{backup}: not a dreamsearch catalog (not an SQLite database); nothing was restored")
    wal = Path(f"{backup}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise BackupError(
            f"{backup}: in use or not closed cleanly ({wal.name} beside it); copy it with "
            "`dreamsearch backup --library ITS_LIBRARY FILE` and restore that"
        )


def restore_catalog(backup: Path, catalog: Path) -> CatalogCopy:
    """Put the catalog ``backup`` in place of ``catalog`` atomically; the caller holds the
    library's writer lock. The copy is checked first (intact, the catalog's tables, a
    schema this dreamsearch knows, then brought up to date); anything else changes
    nothing. The ``-wal`` and ``-shm`` beside ``catalog`` go before the rename: SQLite
    would replay a WAL left by a killed writer over the restored file."""
    check_backup_file(backup)
    if catalog.exists() and backup.resolve() == catalog.resolve():
        raise BackupError(f"{backup} is the library's catalog itself; nothing to restore")
    with staged_file(catalog) as staged:
        try:
            try:
                shutil.copyfile(backup, staged)
            except OSError as exc:
                raise BackupError(f"{backup}: cannot copy it into the library ({exc.strerror or exc})") from None
            folders, files = _checked(backup, staged)
            staged.chmod(0o600)
            for suffix in SIDE_FILES:  # crash after this: the old catalog without its WAL, never the
                Path(f"{catalog}{suffix}").unlink(missing_ok=True)  # restored one with it
        finally:
            _remove_side_files(staged)
    fsync_dir(catalog.parent)
    return CatalogCopy(catalog, catalog.stat().st_size, folders, files)


def _checked(backup: Path, copy: Path) -> tuple[int, int]:
    """Check the staged ``copy`` of ``backup`` and migrate it; its (folders, files)."""
    try:
        connection = sqlite3.connect(copy)
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise BackupError(f"{backup}: damaged ({problems[0]}); nothing was restored")
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = sorted(CATALOG_TABLES - tables)
            if missing:
                raise BackupError(
                    f"{backup}: an SQLite database but not a dreamsearch catalog "
                    f"(no {', '.join(missing)} table); nothing was restored"
                )
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{backup}: damaged or not a dreamsearch catalog ({exc}); nothing was restored") from None
    try:
        Catalog(copy).close()  # migrates it; a newer schema is refused
    except DreamsearchError as exc:
        raise BackupError(str(exc).replace(str(copy), str(backup))) from None
    connection = sqlite3.connect(copy)
    try:
        connection.execute("PRAGMA journal_mode=DELETE")  # nothing of it stays in a -wal of the staged name
        return _counts(connection)
    finally:
        connection.close()


def _counts(connection: sqlite3.Connection) -> tuple[int, int]:
    """(indexed folders, readable files) of a catalog."""
    folders = connection.execute("SELECT count(*) FROM roots").fetchone()[0]
    files = connection.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]
    return folders, files


def _remove_side_files(database: Path) -> None:
    for suffix in SIDE_FILES:
        Path(f"{database}{suffix}").unlink(missing_ok=True)
