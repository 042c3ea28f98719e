"""Where a library lives: a folder holding ``catalog.sqlite`` (the truth), ``index/``
(one FAISS index per model, derived) and ``manifest.json`` (what made the folder)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dreamsearch import __version__
from dreamsearch.atomic import write_atomically
from dreamsearch.display import configured_path
from dreamsearch.errors import DreamsearchError, NotFoundError

ENV_LIBRARY = "DREAMSEARCH_LIBRARY"
#: The folders dreamsearch makes in a library: saved indexes, thumbnails, the evaluation library.
INDEX, THUMBNAILS, EVAL = "index", "thumbnails", "eval"
OWN_FOLDERS = (INDEX, THUMBNAILS, EVAL)
MANIFEST_FORMAT = 1


class WriterBusy(DreamsearchError):
    """Another process holds the library's writer lock (``dreamsearch index``, ``forget``)."""


def library_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (``--library``), else ``$DREAMSEARCH_LIBRARY``, else the user data folder."""
    return configured_path(explicit, ENV_LIBRARY, "data", "library")


@dataclass(frozen=True)
class LibraryLayout:
    """Where each part of the library folder ``root`` lives: callers ask for a path here,
    never join names to ``root`` themselves."""

    root: Path

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def index_dir(self) -> Path:
        return self.root / INDEX

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def thumbnails_dir(self) -> Path:
        """The server's thumbnail cache (``dreamsearch.server.thumbnails``)."""
        return self.root / THUMBNAILS

    @property
    def eval_dir(self) -> Path:
        """The evaluation library (``Library.evaluation``): a library of its own in this one."""
        return self.root / EVAL

    @property
    def serve_socket_path(self) -> Path:
        """Where a running ``dreamsearch serve`` listens for this user's CLI."""
        return self.root / "serve.sock"

    def bytes_on_disk(self, thumbnails: int | None = None) -> int:
        """Bytes of what dreamsearch keeps here: the files at the top and its own folders
        (``OWN_FOLDERS``), not whatever else a user put in the folder (a benchmark's 100k
        photos made ``/api/status`` take 1 s). ``thumbnails``, when given, is the size of
        ``thumbnails/``: the server's cache keeps a tally, so a 2 GB cache is not walked."""
        total = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                elif entry.name == THUMBNAILS and thumbnails is not None:
                    total += thumbnails
                elif entry.name in OWN_FOLDERS and entry.is_dir(follow_symlinks=False):
                    total += _folder_bytes(entry.path)
        return total

    @classmethod
    def prepare(cls, root: Path) -> LibraryLayout:
        """The library at ``root`` for a writer: created (private to this user, 0700) if
        new; a folder that is something else, or a newer library, is refused."""
        layout = cls(Path(root))
        if layout.root.exists() and not layout.root.is_dir():
            raise DreamsearchError(f"{layout.root}: not a folder")
        if layout.manifest_path.exists():
            layout._check_manifest()
            return layout
        if layout.root.is_dir() and any(layout.root.iterdir()) and not layout.catalog_path.exists():
            raise DreamsearchError(f"{layout.root} is not empty and not a dreamsearch library")
        try:
            layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            layout.root.chmod(0o700)  # the catalog lists every photo path: for this user only
            layout.index_dir.mkdir(exist_ok=True)
            manifest = {
                "format": MANIFEST_FORMAT,
                "created_by": f"dreamsearch {__version__}",
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_atomically(layout.manifest_path, json.dumps(manifest, indent=1))
        except OSError as exc:
            raise DreamsearchError(f"{layout.root}: cannot create a library there ({exc.strerror or exc})") from None
        return layout

    @classmethod
    def existing(cls, root: Path) -> LibraryLayout:
        """The library at ``root`` for a reader: it must exist, and nothing is created."""
        layout = cls(Path(root))
        if not layout.catalog_path.is_file():
            raise NotFoundError(f"{layout.root} holds no library yet; run `dreamsearch index FOLDER` first")
        if layout.manifest_path.exists():
            layout._check_manifest()
        return layout

    def _check_manifest(self) -> None:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DreamsearchError(f"{self.manifest_path}: unreadable ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format", 0) > MANIFEST_FORMAT:
            raise DreamsearchError(f"{self.root} was made by a newer dreamsearch; upgrade to open it")

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Held by every command that changes the library (``index``, ``forget``, API
        writes): one writer at a time across processes; readers never wait for it. Taking
        it removes what a writer killed mid-save left behind (see ``remove_leftovers``)."""
        try:
            handle = open(self.root / ".writer.lock", "a")
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise DreamsearchError(f"{self.root} is read-only here; it can be searched but not changed") from None
            raise DreamsearchError(f"{self.root}: cannot take the writer lock ({exc.strerror or exc})") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriterBusy(
                    f"another dreamsearch is changing {self.root} (indexing?); try again when it ends"
                ) from None
            self.remove_leftovers()
            yield

    def remove_leftovers(self) -> None:
        """Delete the temporary files (``atomic.staged_file``: ``.NAME.HEX.partial``) of index
        saves and catalog restores that a killed writer left. Only writers make them, so with
        the writer lock held none is being written. Thumbnails, written by readers, live
        elsewhere and are left alone."""
        leftovers = [*self.index_dir.glob(".*.partial"), *self.root.glob(f".{self.catalog_path.name}.*.partial*")]
        for path in leftovers:
            try:
                path.unlink()
            except OSError:  # gone already, or not ours to remove: harmless either way
                pass


def _folder_bytes(folder: str) -> int:
    total = 0
    for parent, _folders, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:  # removed meanwhile (a thumbnail evicted, an index replaced)
                pass
    return total
