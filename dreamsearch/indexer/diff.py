"""A folder on disk set against what the catalog holds there: which files to read (new,
changed, retried, or lacking a model's vector), which are unchanged, and which are gone
and may be forgotten. Reading only the catalog and the file system, it needs no model,
so a dry run is this alone.

A file is unchanged only if its size, mtime, inode, device and ctime all match
(``file_state``). A folder that lost all or most of its files in one run keeps them: an
unmounted drive or share looks like a folder whose photos were all deleted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from dreamsearch.catalog import Catalog, ModelInfo, RootPlace, StoredFile, path_from_db, path_to_db
from dreamsearch.failures import TRANSIENT, TRANSIENT_TRIES
from dreamsearch.file_state import unchanged
from dreamsearch.indexer.options import IndexOptions, IndexReport
from dreamsearch.indexer.outcomes import Candidate
from dreamsearch.scan import ScannedFile, scan

#: A folder that loses more than this share of its indexed files in one run keeps them
#: (an unmounted drive or share looks like a folder whose photos were all deleted).
MAX_LOSS_WITHOUT_PRUNE = 0.5


@dataclass
class FolderPlan:
    """One folder's share of a run, filled in while its scan streams: where its files go,
    what the catalog held there and, once the scan is done, what is gone."""

    place: RootPlace
    folder: Path
    stored: dict[str, StoredFile]
    seen: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)  # folders that could not be listed
    scan_errors: list[tuple[str, str, str]] = field(default_factory=list)  # (relpath, path, reason)
    unchanged: int = 0
    gone: list[str] | None = None  # None until the scan is done
    stopped_reading: str | None = None  # why the run gave up on the folder

    @property
    def complete(self) -> bool:
        """Scanned to the end and read without giving up: gone files may be removed."""
        return self.gone is not None and self.stopped_reading is None


class ScanWatch:
    """Whether a folder's scan stopped answering: no ``step`` (a folder listed, a file's
    status or first bytes asked for) for ``limit_s`` while it scans. A read stuck in a hung
    drive, a FUSE or network share, or a kernel file cannot be interrupted, but the run
    need not wait for it, holding the writer lock (issue 21). The time the scan spends
    waiting for the consumer (``pause``) does not count."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.since: float | None = None  # None: not scanning
        self.at = ""

    def step(self, path: str) -> None:
        self.since, self.at = time.monotonic(), path

    def pause(self) -> None:
        self.since = None

    def stalled(self) -> str | None:
        since = self.since
        if since is not None and time.monotonic() - since > self.limit_s:
            return f"the scan stopped answering for {self.limit_s:g} s at {self.at} (a hung drive or share?)"
        return None


class CatalogDiff:
    """The run's folders set against the catalog. ``models``: the run's models, whose
    vectors an unchanged file's content must have (none: every stored content counts)."""

    def __init__(
        self,
        catalog: Catalog,
        options: IndexOptions,
        report: IndexReport,
        stop: threading.Event,
        models: Sequence[ModelInfo] = (),
    ) -> None:
        self.catalog, self.options, self.report, self.stop = catalog, options, report, stop
        self.models = list(models)

    def count(self, roots: Sequence[Path]) -> None:
        """``dry_run``: scan and count, never write. Without reading, every difference
        counts as new or changed."""
        for root in roots:
            plan = self.plan(self.catalog.find_root(root) or RootPlace(0, root, ""), root)
            for candidate in self.candidates(plan):
                self.report.new += candidate.previous is None
                self.report.changed += candidate.previous is not None
            self.report.unchanged += plan.unchanged
            self.report.failures += [(path, reason) for _relpath, path, reason in plan.scan_errors]
            self.remove_gone(plan)

    def plan(self, place: RootPlace, folder: Path) -> FolderPlan:
        stored = {
            relpath: known
            for relpath, known in ((path_from_db(k), v) for k, v in self.catalog.files_under(place.id).items())
            if relpath.startswith(place.prefix)
        }
        return FolderPlan(place, folder, stored)

    def candidates(self, plan: FolderPlan, watch: ScanWatch | None = None) -> Iterator[Candidate]:
        """Scan the plan's folder and yield its new and changed files as they are found,
        then those whose content lacks a vector of one of the run's models; finally note
        what is gone. Runs in the stream's feeder thread, so it only reads the catalog and
        touches only the report fields no other thread writes (``found``, ``to_read``)."""
        place, folder = plan.place, plan.folder
        same = []

        def scan_error(path: str, reason: str) -> None:
            """Recorded (``status --failed``), and nothing below it counts as gone."""
            relpath = place.prefix + os.path.relpath(path, folder)
            if os.path.relpath(path, folder) == ".":  # the folder itself: none of its files is gone
                plan.unreadable.append(place.prefix)
            else:
                plan.seen.add(relpath)
                plan.unreadable.append(relpath + "/")
            plan.scan_errors.append((relpath, path, reason))

        watch = watch or ScanWatch(0)
        for found in scan(folder, self.options.exclude, self.options.follow_symlinks, scan_error, watch.step):
            watch.pause()  # until the scan's next step, the time is the consumer's
            if self.stop.is_set():
                return
            relpath = place.prefix + found.relpath
            plan.seen.add(relpath)
            if self.options.only is not None and found.relpath not in self.options.only:
                continue
            if place.prefix:
                found = replace(found, relpath=relpath)
            self.report.found += 1
            known = plan.stored.get(relpath)
            if known and unchanged(known, found) and not self._worth_retrying(known):
                same.append((found, known))
                continue
            self.report.to_read += 1
            yield Candidate(found, known, str(place.path / relpath))
        watch.pause()
        for found, known in self._lacking_vectors(plan, same):
            self.report.to_read += 1
            yield Candidate(found, known, str(place.path / found.relpath))
        plan.gone = sorted(g for g in set(plan.stored) - plan.seen if not g.startswith(tuple(plan.unreadable)))

    def _worth_retrying(self, known: StoredFile) -> bool:
        """A failed file whose cause may have passed (any failed file with ``retry_failed``)."""
        return known.status == "failed" and (
            self.options.retry_failed or (known.failure_kind == TRANSIENT and known.failed_runs < TRANSIENT_TRIES)
        )

    def _lacking_vectors(
        self, plan: FolderPlan, same: list[tuple[ScannedFile, StoredFile]]
    ) -> list[tuple[ScannedFile, StoredFile]]:
        """Of the files unchanged on disk, those whose content lacks a vector of one of this
        run's models (a model added to an indexed folder); the rest count as unchanged.
        Files that failed before are not retried until they change."""
        hashes = [known.content_hash for _found, known in same if known.content_hash]
        complete = self.catalog.hashes_with_vectors(self.models, hashes) if self.models else set(hashes)
        lacking = [(found, known) for found, known in same if known.content_hash and known.content_hash not in complete]
        plan.unchanged = len(same) - len(lacking)
        return lacking

    def remove_gone(self, plan: FolderPlan, found_again: frozenset[str] = frozenset()) -> None:
        """Forget files gone from disk, unless the folder lost so many in one run that it
        looks unmounted: then keep them and say so (``prune`` removes them anyway). Files
        whose content this run found at another path (``found_again``) moved: a renamed
        album is not a loss."""
        if not plan.gone:
            return
        folder = str(plan.folder)
        lost = sum(plan.stored[g].content_hash not in found_again for g in plan.gone)
        if not self.options.prune and lost > MAX_LOSS_WITHOUT_PRUNE * len(plan.stored):
            self.report.kept += len(plan.gone)
            self.report.kept_folders.append((folder, len(plan.gone), len(plan.stored)))
            return
        if not self.options.dry_run:
            self.catalog.remove_files(plan.place.id, [path_to_db(g) for g in plan.gone])
        self.report.removed += len(plan.gone)
