"""The SQLite catalog: the library's source of truth (files, contents, vectors)."""

from dreamsearch.catalog.store import (
    Catalog,
    FailedFile,
    FileDetail,
    FileEntry,
    LogEntry,
    ModelInfo,
    RootPlace,
    StoredFile,
    path_from_db,
    path_to_db,
)

__all__ = [
    "Catalog",
    "FailedFile",
    "FileDetail",
    "FileEntry",
    "LogEntry",
    "ModelInfo",
    "RootPlace",
    "StoredFile",
    "path_from_db",
    "path_to_db",
]
