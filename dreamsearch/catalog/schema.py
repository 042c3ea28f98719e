"""Catalog tables (SQLAlchemy 2.x). The catalog is the source of truth: every vector lives
here, committed in the same transaction as the file rows it belongs to; FAISS files are a
cache rebuilt from it.

Vectors are keyed by *content* (hash of the file's bytes), so copies and moves of a photo
share one vector, and by model, so one library holds several models side by side. Every
vector added or removed appends to ``vector_log``, whose increasing ``seq`` lets a FAISS
index catch up with exactly the changes it has not seen, and whose ``chain`` digest (with
the catalog's random ``catalog_id``) ties a FAISS index to the exact catalog state it holds.

Schema changes go through a new Alembic revision in ``dreamsearch/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Root(Base):
    """An indexed folder; file paths are stored relative to it so a moved folder re-attaches."""

    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    added_at: Mapped[datetime]


class Content(Base):
    """One distinct file content (by hash), whatever paths it lives at."""

    __tablename__ = "contents"
    id: Mapped[int] = mapped_column(primary_key=True)
    hash: Mapped[str] = mapped_column(String, unique=True)
    size: Mapped[int]
    width: Mapped[int | None]
    height: Mapped[int | None]
    format: Mapped[str | None]


class File(Base):
    """A path under a root. ``status`` is ``ok`` (``content_id`` set) or ``failed``
    (``error`` says why, one line)."""

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("root_id", "relpath"),
        Index("ix_files_content", "content_id"),
        Index("ix_files_root_status", "root_id", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"))
    relpath: Mapped[str]
    size: Mapped[int]
    mtime_ns: Mapped[int]
    content_id: Mapped[int | None] = mapped_column(ForeignKey("contents.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(8))
    error: Mapped[str | None]
    #: With size and mtime, what says the file is unchanged, and which paths are one file
    #: (``dreamsearch.file_state``); NULL in rows from before revision 0004.
    inode: Mapped[int | None]
    device: Mapped[int | None]
    ctime_ns: Mapped[int | None]
    #: For a failed file: ``permanent`` or ``transient`` (``dreamsearch.failures``), and how
    #: many runs in a row it failed for the same reason.
    failure_kind: Mapped[str | None] = mapped_column(String(9))
    failed_runs: Mapped[int] = mapped_column(default=0, server_default="0")
    first_seen: Mapped[datetime]
    updated_at: Mapped[datetime]


class Model(Base):
    """An embedding model this library holds vectors for; ``fingerprint`` identifies the
    exact weights, so vectors from different weights are never mixed."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    dim: Mapped[int]
    fingerprint: Mapped[str]
    storage_dtype: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime]


class Vector(Base):
    """A unit-norm embedding of one content by one model (``storage_dtype`` bytes)."""

    __tablename__ = "vectors"
    content_id: Mapped[int] = mapped_column(ForeignKey("contents.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class VectorLogEntry(Base):
    """``op`` is ``add`` or ``remove`` of ``content_id``'s vector for ``model_id``."""

    __tablename__ = "vector_log"
    __table_args__ = (Index("ix_vector_log_model_seq", "model_id", "seq"), {"sqlite_autoincrement": True})
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    content_id: Mapped[int]
    op: Mapped[str] = mapped_column(String(8))
    #: ``sha256`` chain over this model's log up to here (``dreamsearch.catalog.chain``).
    chain: Mapped[str | None]


class CatalogInfo(Base):
    """Facts about the catalog itself; ``catalog_id`` is a random id made at creation."""

    __tablename__ = "catalog_info"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str]
