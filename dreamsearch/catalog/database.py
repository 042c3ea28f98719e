"""Open a catalog database: SQLite in WAL mode with foreign keys on, real transactions
(DDL included), and the schema brought up to date by Alembic, atomically.

A catalog written by a newer dreamsearch (an Alembic revision we do not know) is refused
rather than touched.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from dreamsearch.errors import DreamsearchError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaTooNewError(DreamsearchError):
    """The catalog was written by a newer dreamsearch."""


def create_catalog_engine(path: Path) -> Engine:
    """An engine whose transactions are SQLite transactions (pysqlite's own implicit
    BEGIN skips DDL, so it is switched off and BEGIN issued explicitly)."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("write") else "BEGIN")

    return engine


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def upgrade(engine: Engine, path: Path, target: str = "head") -> None:
    """Migrate to ``target`` in one transaction: a crash mid-way leaves the old schema.

    The revision is read without a write lock first, so opening an up-to-date catalog
    never waits for a process that is indexing into it."""
    from alembic import command
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None))
    wanted = script.get_current_head() if target == "head" else target
    with engine.connect() as connection:
        current = _current_revision(connection, script, path)
        connection.rollback()
        if current == wanted:
            return
        connection.info["write"] = True
        try:
            with connection.begin():
                if _current_revision(connection, script, path) != wanted:
                    command.upgrade(_alembic_config(connection), target)
        finally:
            connection.info.pop("write")


def _current_revision(connection, script, path: Path) -> str | None:
    from alembic.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNewError(
            f"{path} uses catalog schema {current}, newer than this dreamsearch knows "
            f"(up to {script.get_current_head()}); upgrade dreamsearch to open it"
        )
    return current
