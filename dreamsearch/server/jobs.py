"""Index jobs started over HTTP: one writer at a time, run in a thread, their progress
kept as a small dict that ``/api/jobs/{id}`` and its event stream read.

A job is refused with 409 when it cannot run: another job of this server runs, or another
process (``dreamsearch index``) holds the library's writer lock. Ids are random, so an id
from before a restart names no new job; the list keeps the running job and the
``KEEP_FINISHED`` most recent finished ones (it grew without end: issue 21).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from dreamsearch.api import Library
from dreamsearch.errors import DreamsearchError
from dreamsearch.layout import LibraryLayout, WriterBusy
from dreamsearch.scan import PSEUDO_FILE_SYSTEMS, ScannedFile, file_system_types

#: The server's log (uvicorn's, set up by ``serve``).
log = logging.getLogger("uvicorn.error")
#: A job's progress: ``embedded`` out of ``to_embed`` is the web UI's bar (files already
#: indexed, copies and moves are no work); ``scanning`` is how many folders are still being
#: scanned (while above 0, the totals grow). Sent as they change: on a CPU a batch is about
#: 5 s of the model's work (``indexer.pace``), so the counts move at least that often.
COUNTS = (
    "read",
    "to_read",
    "embedded",
    "to_embed",
    "scanning",
    "copied",
    "moved",
    "failed",
    "unchanged",
    "removed",
    "new",
    "changed",
)
FINAL_STATES = ("done", "failed", "interrupted")
#: Finished jobs kept for ``GET /api/jobs/{id}``, most recent first.
KEEP_FINISHED = 100


class JobRunning(DreamsearchError):
    """A job that cannot run now: another one runs, here or in another process (HTTP 409)."""


class Job:
    def __init__(self, job_id: str, folders: list[str], models: list[str]) -> None:
        self.id, self.folders, self.models = job_id, folders, models
        self.state = "running"
        self.counts = dict.fromkeys(COUNTS, 0) | {"scanning": len(folders)}  # nothing counted yet
        self.error: str | None = None
        self.version = 0  # bumped on every change: the event stream sends only news
        self.stopping = threading.Event()  # set: the run commits what the model embedded and ends
        self._lock = threading.Lock()

    def document(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "folders": self.folders,
            "models": self.models,
            "counts": dict(self.counts),
            "error": self.error,
        }

    def _update(self, **fields) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self, key, value)
            self.version += 1


class Jobs:
    """The server's index jobs; at most one runs (the library has one writer).
    ``on_picture`` sees each picture a job decodes (the server's thumbnails)."""

    def __init__(
        self,
        library: Library,
        on_picture: Callable[[ScannedFile, Image.Image], None] | None = None,
        public: Callable[[BaseException], str] = str,
    ) -> None:
        self.library, self.on_picture = library, on_picture
        self.public = public  # a failure as a client may read it (the server's redaction)
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs.values() if j.state == "running"), None)

    def start(self, folders: Sequence[str], models: Sequence[str]) -> Job:
        paths = [_folder(f) for f in folders]
        with self._lock:
            if any(j.state == "running" for j in self.jobs.values()):
                raise JobRunning("an index job is already running; wait for it (GET /api/jobs/ID)")
            self._check_writer_free()
            job_id = f"j{secrets.token_hex(6)}"
            job = self.jobs[job_id] = Job(job_id, [str(p) for p in paths], list(models))
            self._prune()
        threading.Thread(target=self._run, args=(job, paths), name=f"dreamsearch-job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def stop(self, job_id: str) -> Job | None:
        """Ask the job to stop: it commits what the model embedded and ends ``interrupted``."""
        job = self.get(job_id)
        if job is not None:
            job.stopping.set()
        return job

    def _check_writer_free(self) -> None:
        """A 409 now rather than a 202 and a failed job, when another process holds the
        writer lock. The job takes the lock a moment later: a process that starts in that
        moment wins, and the job fails with the same reason."""
        try:
            with LibraryLayout.prepare(self.library.layout.root).writer_lock():
                pass
        except WriterBusy:
            raise JobRunning(
                "another dreamsearch process is changing the library (an index run?); try again when it ends"
            ) from None

    def _prune(self) -> None:
        finished = [job_id for job_id, job in self.jobs.items() if job.state in FINAL_STATES]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[job_id]

    def _run(self, job: Job, paths: list[Path]) -> None:
        def progress(report) -> None:
            job._update(counts={key: getattr(report, key) for key in COUNTS})

        try:
            report = self.library.index(
                paths, job.models, progress=progress, stop=job.stopping, on_picture=self.on_picture
            )
        except DreamsearchError as exc:
            job._update(state="failed", error=self.public(exc))
        except Exception as exc:  # noqa: BLE001 - reported on the job, never lost in a thread
            log.exception("index job %s failed", job.id)
            job._update(state="failed", error=f"internal error ({type(exc).__name__}); the server log has the details")
        else:
            progress(report)
            job._update(state="interrupted" if report.interrupted else "done")
        with self._lock:
            self._prune()


def _folder(text: str) -> Path:
    """A folder to index, as given over HTTP: absolute, no ``..``, an existing directory,
    not a kernel file system. Every refusal is a 400 naming the path as given."""
    path = Path(text)
    shown = _shown(text)
    if not text or "\x00" in text or not path.is_absolute():
        raise DreamsearchError(f"{shown}: give an absolute folder path")
    if ".." in path.parts:
        raise DreamsearchError(f"{shown}: '..' is not allowed in a folder path")
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise DreamsearchError(f"{shown}: the path is too long for the file system") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DreamsearchError(f"{shown}: no such folder") from None
        raise DreamsearchError(f"{shown}: cannot open it ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise DreamsearchError(f"{shown}: no such folder")
    kind = file_system_types().get(info.st_dev)
    if kind in PSEUDO_FILE_SYSTEMS:
        raise DreamsearchError(f"{shown}: a {kind} file system, not photos")
    return path


def _shown(text: str, most: int = 120) -> str:
    """``text`` quoted for an error message, its middle cut if it is long."""
    return repr(text if len(text) <= most else f"{text[: most // 2]}...{text[-most // 3 :]}")
