"""Which changed paths are ready to index: not a temporary or hidden name, and unchanged on
disk (size and mtime) for the settle time. A camera or sync client writing a large photo
changes both at each write, so a half-written file is never taken."""

from __future__ import annotations

import os

from dreamsearch.scan import JUNK_FOLDERS

#: Names editors, browsers and sync clients write before renaming into place (Syncthing's
#: ``.syncthing.NAME.tmp`` and ``~syncthing~NAME.tmp`` are hidden or end in ``.tmp``).
TEMPORARY_SUFFIXES = (".tmp", "~", ".part", ".partial", ".crdownload", ".download", ".swp")

Signature = tuple[int, int] | None  # (size, mtime_ns), None when the path is gone


def ignored(relpath: str) -> bool:
    """A path (relative to its watched folder) the indexer would skip, or a temporary name
    that will be renamed into place (that rename is the event that counts)."""
    parts = relpath.split(os.sep)
    name = parts[-1]
    return (
        any(part.startswith(".") or part in JUNK_FOLDERS for part in parts)
        or name.endswith(TEMPORARY_SUFFIXES)
        or name.startswith("~")
    )


def signature(path: str) -> Signature:
    try:
        state = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return state.st_size, state.st_mtime_ns


class Settler:
    """Paths seen changing, each with its last signature and since when it has held."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._paths: dict[str, tuple[Signature, float]] = {}

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, path: object) -> bool:
        return path in self._paths

    def note(self, path: str, now: float) -> None:
        """An event for ``path``: its clock starts again."""
        self._paths[path] = (signature(path), now)

    def ready(self, now: float) -> list[str]:
        """The paths whose signature held for the settle time (taken out of the table);
        those that changed meanwhile start again. Only paths past their time are stat'ed."""
        done = []
        for path, (seen, since) in list(self._paths.items()):
            if now - since < self.settle_s:
                continue
            current = signature(path)
            if current == seen:
                done.append(path)
                del self._paths[path]
            else:
                self._paths[path] = (current, now)
        return done
