"""Open a catalog database: SQLite in WAL mode with foreign keys on, real transactions
(DDL included), and the schema brought up to date by Alembic, atomically.

A catalog written by a newer dreamsearch (an Alembic revision we do not know) is refused
rather than touched.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext

from dreamsearch.errors import DreamsearchError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaTooNewError(DreamsearchError):
    """The catalog was written by a newer dreamsearch."""


class CatalogError(DreamsearchError):
    """The catalog file cannot be used: damaged, not a catalog, read-only, disk full."""


class CatalogOutdatedError(CatalogError):
    """A read-only opener met a catalog that needs a migration first."""


def create_catalog_engine(path: Path, read_only: bool = False) -> Engine:
    """An engine whose transactions are SQLite transactions (pysqlite's own implicit
    BEGIN skips DDL, so it is switched off and BEGIN issued explicitly).

    ``read_only`` opens the file without write access (``mode=ro``); where this user
    cannot write beside it (a read-only mount or folder) SQLite could not even create the
    WAL's shared-memory file, so the file is opened ``immutable`` instead: it reads the
    last checkpointed state, which is consistent."""
    if path.exists() and path.stat().st_size == 0:
        raise CatalogError(
            f"{path}: empty file (0 bytes), not a catalog; it was truncated or damaged. "
            "Restore it from a backup, or delete it to start an empty library"
        )
    if read_only:
        immutable = "&immutable=1" if not os.access(path.parent, os.W_OK) else ""
        engine = create_engine(f"sqlite:///file:{path}?mode=ro{immutable}&uri=true", connect_args={"timeout": 30})
    else:
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not read_only:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "handle_error")
    def _one_line(context: ExceptionContext) -> None:
        raise catalog_error(path, context.original_exception) from None

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("write") else "BEGIN")

    return engine


def catalog_error(path: Path, error: BaseException) -> BaseException:
    """The user-facing form of an SQLite error on the catalog at ``path`` (other errors,
    programming mistakes included, are returned unchanged)."""
    if not isinstance(error, sqlite3.DatabaseError) or isinstance(
        error, (sqlite3.ProgrammingError, sqlite3.IntegrityError)
    ):
        return error
    message = str(error)
    if "disk is full" in message:
        return CatalogError(
            f"{path}: the disk is full; free some space and run the command again (everything committed so far is kept)"
        )
    if "readonly" in message or "read-only" in message:
        return CatalogError(f"{path}: read-only; this command needs to change the library")
    if "not a database" in message or "malformed" in message:
        return CatalogError(
            f"{path}: damaged or not a dreamsearch catalog ({message}); "
            "restore it from a backup, or move it away and index again"
        )
    if "unable to open" in message:
        return CatalogError(f"{path}: cannot be opened ({message}); check that its folder exists and is readable")
    if "locked" in message or "busy" in message:
        return CatalogError(f"{path}: busy for more than 30 s (another dreamsearch is writing); try again")
    return CatalogError(f"{path}: {message}")


def _alembic_config(connection: Connection | None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def newest_revision() -> str:
    """The newest migration's revision id, read from the file names (``NNNN_what.py`` holds
    revision ``NNNN``; a test keeps this equal to Alembic's head)."""
    return max(path.name[:4] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def _stamped_revision(engine: Engine) -> str | None:
    """The revision the catalog says it is at, read with plain SQL (None if unstamped)."""
    with engine.connect() as connection:
        if (
            connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).first()
            is None
        ):
            return None
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    assert head is not None  # the package ships its migrations
    return head


def upgrade(engine: Engine, path: Path, target: str = "head", read_only: bool = False) -> None:
    """Migrate to ``target`` in one transaction: a crash mid-way leaves the old schema.

    The revision is read without a write lock first, so opening an up-to-date catalog
    never waits for a process that is indexing into it. A ``read_only`` opener only
    checks: an outdated catalog is refused with a way forward."""
    if target == "head" and _stamped_revision(engine) == newest_revision():
        return  # up to date: Alembic (0.18 s to import, a quarter of a cold `status`) is not needed
    if target == "head" and not read_only and _created_new(engine):
        return
    from alembic import command
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None))
    wanted = script.get_current_head() if target == "head" else target
    with engine.connect() as connection:
        current = _current_revision(connection, script, path)
        connection.rollback()
        if current == wanted:
            return
        if read_only:
            raise CatalogOutdatedError(
                f"{path} was made by an older dreamsearch and is read-only here; run "
                "`dreamsearch index` once with write access to upgrade it"
            )
        connection.info["write"] = True
        try:
            with connection.begin():
                if _current_revision(connection, script, path) != wanted:
                    command.upgrade(_alembic_config(connection), target)
        finally:
            connection.info.pop("write")


#: The table Alembic keeps its stamp in, as Alembic creates it.
ALEMBIC_VERSION_TABLE = (
    "CREATE TABLE alembic_version (\n\tversion_num VARCHAR(32) NOT NULL, \n"
    "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)"
)


def _created_new(engine: Engine) -> bool:
    """Build a new catalog, stamped at the newest revision, straight from ``schema``: what
    the migrations build on an empty file (tests/catalog/test_catalog.py compares the two),
    without Alembic, whose import and five migrations took 0.14 s of a new library's start
    on 2 cores. False when the file holds a schema already (it is migrated instead)."""
    import uuid

    from dreamsearch.catalog.schema import Base

    with engine.connect() as connection:
        connection.info["write"] = True  # BEGIN IMMEDIATE: two new openers never both create
        try:
            with connection.begin():
                if connection.exec_driver_sql("SELECT 1 FROM sqlite_master").first() is not None:
                    return False
                Base.metadata.create_all(connection)
                connection.exec_driver_sql(ALEMBIC_VERSION_TABLE)
                connection.exec_driver_sql("INSERT INTO alembic_version VALUES (?)", (newest_revision(),))
                connection.exec_driver_sql(  # as migration 0003 makes it
                    "INSERT INTO catalog_info (key, value) VALUES ('catalog_id', ?)", (uuid.uuid4().hex,)
                )
        finally:
            connection.info.pop("write")
    return True


def _current_revision(connection: Connection, script: ScriptDirectory, path: Path) -> str | None:
    from alembic.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNewError(
            f"{path} uses catalog schema {current}, newer than this dreamsearch knows "
            f"(up to {script.get_current_head()}); upgrade dreamsearch to open it"
        )
    return current
