"""Index jobs started over HTTP: one writer at a time, run in a thread, their progress
kept as a small dict that ``/api/jobs/{id}`` and its event stream read."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from pathlib import Path

from dreamsearch.api import Library
from dreamsearch.errors import DreamsearchError

COUNTS = ("read", "to_read", "embedded", "copied", "moved", "failed", "unchanged", "removed", "new", "changed")
FINAL_STATES = ("done", "failed", "interrupted")


class JobRunning(DreamsearchError):
    """A second index job while one runs (HTTP 409)."""


class Job:
    def __init__(self, job_id: str, folders: list[str], models: list[str]) -> None:
        self.id, self.folders, self.models = job_id, folders, models
        self.state = "running"
        self.counts = dict.fromkeys(COUNTS, 0)
        self.error: str | None = None
        self.version = 0  # bumped on every change: the event stream sends only news
        self._lock = threading.Lock()

    def document(self) -> dict:
        return {"id": self.id, "state": self.state, "folders": self.folders, "models": self.models,
                "counts": dict(self.counts), "error": self.error}

    def _update(self, **fields) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self, key, value)
            self.version += 1


class Jobs:
    """The server's index jobs; at most one runs (the library has one writer)."""

    def __init__(self, library: Library) -> None:
        self.library = library
        self.jobs: dict[str, Job] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs.values() if j.state == "running"), None)

    def start(self, folders: Sequence[str], models: Sequence[str]) -> Job:
        paths = [_folder(f) for f in folders]
        with self._lock:
            if any(j.state == "running" for j in self.jobs.values()):
                raise JobRunning("an index job is already running; wait for it (GET /api/jobs/ID)")
            job_id = f"j{next(self._numbers)}"
            job = self.jobs[job_id] = Job(job_id, [str(p) for p in paths], list(models))
        threading.Thread(target=self._run, args=(job, paths), name=f"dreamsearch-job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def _run(self, job: Job, paths: list[Path]) -> None:
        def progress(report) -> None:
            job._update(counts={key: getattr(report, key) for key in COUNTS})

        try:
            report = self.library.index(paths, job.models, progress)
        except DreamsearchError as exc:
            job._update(state="failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported on the job, never lost in a thread
            job._update(state="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            progress(report)
            job._update(state="interrupted" if report.interrupted else "done")


def _folder(text: str) -> Path:
    """A folder to index, as given over HTTP: absolute, no ``..``, an existing directory."""
    path = Path(text)
    if not text or "\x00" in text or not path.is_absolute():
        raise DreamsearchError(f"{text!r}: give an absolute folder path")
    if ".." in path.parts:
        raise DreamsearchError(f"{text!r}: '..' is not allowed in a folder path")
    if not path.is_dir():
        raise DreamsearchError(f"{text!r}: no such folder")
    return path
