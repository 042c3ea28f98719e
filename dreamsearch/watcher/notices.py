"""The warnings of the watchers running on a library, where ``dreamsearch status`` reads
them: one small JSON file per watcher process in the library folder (``watch-PID.json``),
replaced atomically when its warnings change and removed when it stops. A file whose
process is gone (``kill -9``) is ignored, and removed by the next watcher; the process's
start time is kept beside its id, so a recycled id does not revive it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dreamsearch.atomic import write_atomically


def publish(library: Path, warnings: list[str]) -> None:
    """This process's warnings (none: the file is removed)."""
    path = library / f"watch-{os.getpid()}.json"
    if warnings:
        write_atomically(path, json.dumps({"pid": os.getpid(), "started": _started(os.getpid()), "warnings": warnings}))
    else:
        path.unlink(missing_ok=True)


def current(library: Path, remove_stale: bool = False) -> list[str]:
    """The warnings of the watchers alive now; ``remove_stale`` (a watcher starting) also
    deletes the files of those that are gone."""
    warnings = []
    for path in sorted(library.glob("watch-*.json")):
        try:
            notice = json.loads(path.read_text())
            alive = _started(int(notice["pid"])) == notice["started"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or not ours
        if alive:
            warnings += [str(line) for line in notice["warnings"]]
        elif remove_stale:
            path.unlink(missing_ok=True)
    return warnings


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):  # no /proc here: alive is all that can be told
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
