"""Where a library lives: a folder holding ``catalog.sqlite`` (the truth), ``index/``
(one FAISS index per model, derived) and ``manifest.json`` (what made the folder)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dreamsearch import __version__
from dreamsearch.errors import DreamsearchError
from dreamsearch.paths import configured_path

ENV_LIBRARY = "DREAMSEARCH_LIBRARY"
MANIFEST_FORMAT = 1


def library_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (``--library``), else ``$DREAMSEARCH_LIBRARY``, else the user data folder."""
    return configured_path(explicit, ENV_LIBRARY, "data", "library")


@dataclass(frozen=True)
class LibraryFolder:
    root: Path

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @classmethod
    def prepare(cls, root: Path) -> LibraryFolder:
        """Create the folder and its manifest if new; refuse a folder that is something else."""
        folder = cls(Path(root))
        if folder.root.exists() and not folder.root.is_dir():
            raise DreamsearchError(f"{folder.root}: not a folder")
        if folder.manifest_path.exists():
            try:
                manifest = json.loads(folder.manifest_path.read_text())
            except (OSError, ValueError) as exc:
                raise DreamsearchError(f"{folder.manifest_path}: unreadable ({exc})") from None
            if manifest.get("format", 0) > MANIFEST_FORMAT:
                raise DreamsearchError(f"{folder.root} was made by a newer dreamsearch; upgrade to open it")
            return folder
        if folder.root.is_dir() and any(folder.root.iterdir()) and not folder.catalog_path.exists():
            raise DreamsearchError(f"{folder.root} is not empty and not a dreamsearch library")
        folder.index_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"format": MANIFEST_FORMAT, "created_by": f"dreamsearch {__version__}",
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        staged = folder.root / ".manifest.json.partial"
        staged.write_text(json.dumps(manifest, indent=1))
        os.replace(staged, folder.manifest_path)
        return folder

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Held by every command that changes the library (``index``, ``forget``, API
        writes): one writer at a time across processes; readers never wait for it."""
        try:
            handle = open(self.root / ".writer.lock", "a")
        except PermissionError:
            raise DreamsearchError(f"{self.root} is read-only for this user; it can be searched but not changed") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DreamsearchError(f"another dreamsearch is changing {self.root} (indexing?); "
                                       "try again when it ends") from None
            yield
