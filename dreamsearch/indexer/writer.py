"""The run's writes to the catalog and its indexes: batches of files with their contents
and vectors, failed files, and now and then the FAISS indexes. One place, so a file's
own bad values cost that file only, while the catalog's own errors (a full disk, a
damaged catalog) stop the run."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from dreamsearch.catalog import Catalog, FileEntry, ModelInfo, RootPlace, path_from_db, path_to_db
from dreamsearch.errors import DreamsearchError
from dreamsearch.failures import failure_kind
from dreamsearch.images import Decoded
from dreamsearch.indexer.options import IndexReport
from dreamsearch.layout import LibraryLayout
from dreamsearch.scan import ScannedFile
from dreamsearch.vector_index import save_indexes

#: A run saves its FAISS indexes as it goes (so the next start after a kill replays less of
#: the catalog's log) at most this often, and spends at most ``SAVE_INDEX_SHARE`` of its
#: time on it: each save rewrites the whole index file (11.6 s at 2M vectors), and saving
#: every 50 batches made one writer commit 494 files/s instead of 4,129 at 100k 1792-d
#: vectors (``benchmarks/commit_rate.py --save``).
SAVE_INDEX_EVERY_S = 60.0
SAVE_INDEX_SHARE = 0.1


class SaveSchedule:
    """When the next save of the indexes is due: ``SAVE_INDEX_EVERY_S`` after the last one,
    or ten times as long as it took, whichever is later."""

    def __init__(self) -> None:
        self._next = time.monotonic() + SAVE_INDEX_EVERY_S

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def saved(self, seconds: float) -> None:
        self._next = time.monotonic() + max(SAVE_INDEX_EVERY_S, seconds / SAVE_INDEX_SHARE)


class CatalogWriter:
    """Commits for one run. ``replaced``: contents whose files changed, dropped at the end
    if nothing holds them any more."""

    def __init__(self, catalog: Catalog, layout: LibraryLayout, report: IndexReport) -> None:
        self.catalog, self.layout, self.report = catalog, layout, report
        self.replaced: set[int] = set()
        self.saves = SaveSchedule()

    def record(
        self, place: RootPlace, files: list[FileEntry], vectors: dict[str, dict[str, np.ndarray]] | None
    ) -> dict[str, str]:
        """Commit ``files`` and ``vectors`` in one transaction. An unexpected error (a bug, a
        value SQLite cannot hold) costs only the file that causes it: the batch is committed
        again file by file, and a file that fails alone is recorded as failed with the error.
        Returns ``{relpath: reason}`` of those. The catalog's own errors (a full disk, a
        damaged catalog) are not a file's fault: they stop the run."""
        try:
            self.replaced |= self.catalog.commit_batch(place.id, files, vectors, drop_orphans=False)
            return {}
        except DreamsearchError:
            raise
        except Exception:  # noqa: BLE001 - retried file by file below, each error kept
            pass
        lost = {}
        for entry in files:
            own = {
                name: {h: v for h, v in by_hash.items() if h == entry.content_hash}
                for name, by_hash in (vectors or {}).items()
            }
            try:
                self.replaced |= self.catalog.commit_batch(place.id, [entry], own, drop_orphans=False)
            except DreamsearchError:
                raise
            except Exception as exc:  # noqa: BLE001 - this file's own fault: recorded, the run goes on
                lost[entry.relpath] = f"could not be recorded: {type(exc).__name__}: {exc}".splitlines()[0]
                self.record_failure(
                    place.id,
                    ScannedFile(
                        path_from_db(entry.relpath),
                        entry.size,
                        entry.mtime_ns,
                        entry.inode,
                        entry.device,
                        entry.ctime_ns,
                    ),
                    str(place.path / path_from_db(entry.relpath)),
                    lost[entry.relpath],
                )
        return lost

    def record_failure(self, root_id: int, found: ScannedFile, path: str, reason: str) -> None:
        """Report and record one file that failed. A file whose failure cannot be recorded
        either (its values break the catalog) is only reported: not stored, it is read
        again by the next run."""
        reason = reason or "unknown error"
        self.report.failed += 1
        self.report.failures.append((path, reason))
        entry = FileEntry(
            path_to_db(found.relpath),
            found.size,
            found.mtime_ns,
            None,
            error=reason,
            inode=found.inode,
            device=found.device,
            ctime_ns=found.ctime_ns,
            failure_kind=failure_kind(reason),
        )
        try:
            self.replaced |= self.catalog.commit_batch(root_id, [entry], drop_orphans=False)
        except DreamsearchError:
            raise
        except Exception:  # noqa: BLE001 - reported above; nothing more can be kept
            pass

    def record_scan_errors(self, place: RootPlace, errors: Sequence[tuple[str, str, str]]) -> None:
        """Folders and files the scan could not list or open (``(relpath, path, reason)``):
        recorded, but the root itself has no row to hold its failure: only reported."""
        for relpath, path, reason in errors:
            if relpath == place.prefix + ".":
                self.report.failures.append((path, reason))
            else:
                self.record_failure(place.id, ScannedFile(relpath, 0, 0), path, f"cannot list or open: {reason}")

    def save_indexes(self, models: Sequence[ModelInfo]) -> None:
        started = time.monotonic()
        save_indexes(self.catalog, self.layout.index_dir, models)
        self.saves.saved(time.monotonic() - started)


def entry(found: ScannedFile, content_hash: str, decoded: Decoded | None = None) -> FileEntry:
    """The catalog row of a file that was read (with the picture's facts if decoded)."""
    return FileEntry(
        path_to_db(found.relpath),
        found.size,
        found.mtime_ns,
        content_hash,
        None if decoded is None else decoded.width,
        None if decoded is None else decoded.height,
        None if decoded is None else decoded.format,
        inode=found.inode,
        device=found.device,
        ctime_ns=found.ctime_ns,
    )
