"""The SQLite catalog: the library's source of truth (files, contents, vectors)."""

from dreamsearch.catalog.store import Catalog, FileDetail, FileEntry, LogEntry, ModelInfo, StoredFile, relpath_from_db, relpath_to_db

__all__ = ["Catalog", "FileDetail", "FileEntry", "LogEntry", "ModelInfo", "StoredFile", "relpath_from_db", "relpath_to_db"]
