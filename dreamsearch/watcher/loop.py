"""Follow folders and keep a library in step: ``dreamsearch watch`` and ``serve --watch``.

Events are hints, never the truth: a path that changed is re-stat'ed until it settles,
and settled paths become ordinary index runs (``Library.index``), so copies and moves
reuse vectors and deletions follow the indexer's rules. Each run takes the writer lock and
lets it go, as ``dreamsearch index`` does: other writers run in between, and when one
holds it the batch waits. A folder that vanishes, comes back or has another file system
mounted over it is noticed by its identity (device, inode) and caught up with one run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dreamsearch.display import display_path, kept_folder_warning, problem_line
from dreamsearch.errors import DreamsearchError
from dreamsearch.indexer import IndexOptions, IndexReport, outermost
from dreamsearch.layout import WriterBusy
from dreamsearch.watcher import notices
from dreamsearch.watcher.batches import plan_batches
from dreamsearch.watcher.roots import Root
from dreamsearch.watcher.settle import Settler, ignored

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.api import Library

#: How often the loop wakes without events, to settle paths and look at the folders: a
#: stat per folder and per path past its settle time, so idle costs about nothing.
TICK_S = 0.5
#: watchfiles gathers events until none came for ``STEP_MS`` (at most ``DEBOUNCE_MS``);
#: its Rust thread sleeps ``STEP_MS`` between looks at the stop flag and signals.
STEP_MS = 100
DEBOUNCE_MS = 500
#: Settled paths wait for those still settling (one run for a burst, not one per tick),
#: but no longer than this: a sync that writes for an hour is indexed as it goes.
MAX_HOLD_S = 10.0
#: Batch documents kept for ``/api/events`` clients that fall behind.
KEEP_BATCHES = 100
EVENT_BACKEND = {"linux": "inotify", "darwin": "FSEvents", "win32": "ReadDirectoryChangesW"}.get(sys.platform, "kqueue")


class Watcher:
    """Keeps ``folders`` indexed in ``library`` with ``models`` until ``stop`` is set.
    ``say(line)`` gets warnings and notes (one per event of the folders' health),
    ``on_batch(document)`` each committed run; ``options`` are each run's (its ``only``
    is set per run)."""

    def __init__(
        self,
        library: Library,
        folders: Sequence[str | os.PathLike[str]],
        models: Sequence[str],
        settle_s: float = 2.0,
        rescan_every_s: float = 600.0,
        say: Callable[[str], None] = print,
        on_batch: Callable[[dict], None] | None = None,
        options: IndexOptions | None = None,
    ) -> None:
        self.library, self.models, self.options = library, list(models), options or IndexOptions()
        self.roots = [Root.look(folder) for folder in outermost(Path(f).expanduser().resolve() for f in folders)]
        self.settler = Settler(settle_s)
        self.rescan_every_s = rescan_every_s
        self.say, self.on_batch = say, on_batch or (lambda document: None)
        self.stop = threading.Event()
        self.ready: set[str] = set()  # settled, waiting for a run
        self.ready_since = 0.0
        self.catch_up: set[Root] = {root for root in self.roots if root.present}
        self.next_rescan = {root: time.monotonic() + rescan_every_s for root in self.roots}
        self.events_failed: str | None = None
        self.state = "starting"
        self.warnings: dict[str, str] = {}  # key -> line, while it holds
        self.batches: deque[dict] = deque(maxlen=KEEP_BATCHES)
        self.version = 0  # bumped on every change of ``document()``
        self._lock = threading.Lock()

    # what clients read (any thread) ---------------------------------------------------

    def document(self) -> dict:
        """The watcher's state, as ``/api/health`` shows it."""
        with self._lock:
            return {
                "state": self.state,
                "folders": [
                    {"path": str(root.path), "mode": self._mode(root), "present": root.present} for root in self.roots
                ],
                "pending": len(self.settler) + len(self.ready),
                "batches": self.batches[-1]["seq"] if self.batches else 0,
                "last_batch": self.batches[-1] if self.batches else None,
                "warnings": list(self.warnings.values()),
                "version": self.version,
            }

    def batches_after(self, seq: int) -> list[dict]:
        """Committed runs numbered above ``seq`` (the last ``KEEP_BATCHES``)."""
        with self._lock:
            return [batch for batch in self.batches if batch["seq"] > seq]

    def _mode(self, root: Root) -> str:
        if self.events_failed is not None:
            return f"rescans every {self.rescan_every_s:g} s"
        if root.network:
            return f"events + rescans every {self.rescan_every_s:g} s ({root.network})"
        return f"events ({EVENT_BACKEND})"

    def _changed(self, **fields) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(self, name, value)
            self.version += 1

    def _warn(self, key: str, line: str | None) -> None:
        """Set (said once) or clear (``line`` None) the warning ``key``."""
        if self.warnings.get(key) == line:
            return
        with self._lock:
            if line is None:
                self.warnings.pop(key, None)
            else:
                self.warnings[key] = line
            self.version += 1
        if line is not None:
            self.say(line)
        self._publish()

    def _publish(self) -> None:
        """Leave the warnings where ``dreamsearch status`` reads them (``notices``)."""
        try:
            notices.publish(self.library.layout.root, list(self.warnings.values()))
        except OSError:  # no library folder yet, or a read-only one: the warnings were said
            pass

    # the loop (one thread) ----------------------------------------------------------

    def run(self) -> None:
        """Catch up, then follow the folders until ``stop`` is set (Ctrl-C in the CLI)."""
        if self.library.layout.root.is_dir():
            notices.current(self.library.layout.root, remove_stale=True)
        for root in self.roots:
            self.say(f"watching {display_path(root.path)}: {self._mode(root)}")
            self._health(root)
        self._changed(state="catching up" if self.catch_up else "watching")
        while not self.stop.is_set():
            for changes in self._events():
                now = time.monotonic()
                for _change, path in changes:
                    self._noted(path, now)
                if self._roots_moved():
                    break  # watch the folders now there
                self._work(now)
                if self.stop.is_set():
                    break
        self._changed(state="stopped", warnings={})
        self._publish()

    def _events(self) -> Iterator[set]:
        """Sets of ``(change, path)`` from watchfiles, and an empty set every ``TICK_S``;
        only ticks once events cannot be had (then the folders are rescanned)."""
        live = [str(root.path) for root in self.roots if root.present]
        if live and self.events_failed is None:
            import watchfiles

            try:
                yield from watchfiles.watch(
                    *live,
                    watch_filter=None,
                    debounce=DEBOUNCE_MS,
                    step=STEP_MS,
                    rust_timeout=int(TICK_S * 1000),
                    yield_on_timeout=True,
                    stop_event=self.stop,
                    raise_interrupt=False,
                    ignore_permission_denied=True,
                )
                return
            except FileNotFoundError:  # a folder went between the look and the watch: look again
                self.stop.wait(TICK_S)
                return
            except (OSError, RuntimeError) as exc:  # the inotify watch limit, mostly
                self.events_failed = str(exc)
                self._warn(
                    "events",
                    f"warning: cannot follow file system events ({exc}); rescanning every "
                    f"{self.rescan_every_s:g} s instead (see docs/watch.md: inotify watches)",
                )
                self.catch_up.update(root for root in self.roots if root.present)
        while not self.stop.wait(TICK_S):
            yield set()

    def _noted(self, path: str, now: float) -> None:
        for root in self.roots:
            relative = root.holding(path)
            if relative is not None and not ignored(relative):
                self.settler.note(path, now)
                return

    def _roots_moved(self) -> bool:
        """Look at each folder; one that vanished, came back or was replaced (a mount) is
        told once and caught up. True when the set of folders to watch changed."""
        moved = False
        for root in self.roots:
            if root.changed():
                moved = True
                self._health(root)
                if root.present:
                    self.say(f"note: {display_path(root.path)} changed on disk (remounted?): catching up")
                    self.catch_up.add(root)
                else:
                    self.catch_up.discard(root)
        return moved

    def _health(self, root: Root) -> None:
        key = f"missing {root.path}"
        self._warn(
            key,
            None
            if root.present
            else f"warning: watched folder {display_path(root.path)} is missing (unmounted?): its files are kept, "
            f"and it is caught up when it comes back",
        )

    def _work(self, now: float) -> None:
        """Start the runs that are due: catch-ups, rescans, and settled paths once nothing
        else is settling (or they waited ``MAX_HOLD_S``)."""
        settled = self.settler.ready(now)
        if settled and not self.ready:
            self.ready_since = now
        self.ready.update(settled)
        for root in self.roots:
            if root.present and (root.network or self.events_failed) and now >= self.next_rescan[root]:
                self.catch_up.add(root)
        if self.catch_up or (self.ready and (not len(self.settler) or now - self.ready_since >= MAX_HOLD_S)):
            self._run_due()
        elif settled or self.state != "watching":
            self._changed(state="watching")

    def _run_due(self) -> None:
        caught = sorted((root for root in self.catch_up if root.present), key=lambda root: str(root.path))
        if caught and not self._index("catch-up", [root.path for root in caught], None):
            return
        for root in caught:
            self.catch_up.discard(root)
            self.next_rescan[root] = time.monotonic() + self.rescan_every_s
        covered = {path for path in self.ready if any(root.holding(path) is not None for root in caught)}
        self.ready -= covered
        for batch in plan_batches(self.ready, self.roots, self.settler):
            if not self._index("changes", [batch.folder], batch.only):
                return
            self.ready -= batch.paths
        self.ready.clear()  # the rest is in no present folder
        self._changed(state="watching")

    def _index(self, reason: str, folders: list[Path], only: frozenset[str] | None) -> bool:
        """One index run; False if it must wait for the writer lock (it is tried again)."""
        if self.state != "waiting for the writer lock":
            self._changed(state="indexing")
        try:
            report = self.library.index(folders, self.models, replace(self.options, only=only), stop=self.stop)
        except WriterBusy:
            if self.state != "waiting for the writer lock":
                self.say("note: another dreamsearch is changing the library; waiting for it to finish")
                self._changed(state="waiting for the writer lock")
            return False
        except DreamsearchError as exc:  # a folder gone mid-way: looked at again next tick
            self.say(f"error: {exc}")
            return True
        self._committed(reason, folders, report)
        return True

    def _committed(self, reason: str, folders: list[Path], report: IndexReport) -> None:
        for path, why in report.failures:
            self.say(f"skipped {problem_line(path, why)}")
        kept = {folder for folder, _gone, _indexed in report.kept_folders}
        for folder, gone, indexed in report.kept_folders:
            self._warn(f"kept {folder}", kept_folder_warning(folder, gone, indexed))
        for key in [k for k in self.warnings if k.startswith("kept ")]:
            if key[5:] not in kept and any(Path(key[5:]).is_relative_to(f) for f in folders):
                self._warn(key, None)
        moved = report.moved
        document = {
            "seq": (self.batches[-1]["seq"] if self.batches else 0) + 1,
            "reason": reason,
            "folders": [str(f) for f in folders],
            "added": max(0, report.new - moved),
            "changed": report.changed,
            "removed": max(0, report.removed - moved),
            "moved": moved,
            "failed": report.failed,
            "embedded": report.embedded,
            "kept": report.kept,
            "seconds": round(report.seconds, 2),
            "interrupted": report.interrupted,
        }
        with self._lock:
            self.batches.append(document)
            self.version += 1
        self.on_batch(document)
