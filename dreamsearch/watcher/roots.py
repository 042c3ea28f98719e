"""The watched folders' health: present or missing (an unplugged drive), the same folder
or another one mounted in its place, and whether events can be trusted there."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from dreamsearch.scan import file_system_types

#: File systems where another machine can change files: inotify reports only this
#: machine's changes there, so such folders are also rescanned (``rescan_every``).
#: FUSE file systems (``fuse.sshfs``, ``fuse.rclone``, ...) count too; ``fuseblk``
#: (NTFS or exFAT drives plugged in here) does not.
NETWORK_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "davfs",
        "virtiofs",
        "ncpfs",
    }
)

Identity = tuple[int, int] | None  # (device, inode) of the folder; None when it is missing


def identity(folder: Path) -> Identity:
    """Which folder is at ``folder`` now: a drive mounted over it, or unmounted from it,
    changes this even when the path stays."""
    try:
        state = os.stat(folder)
    except OSError:
        return None
    return (state.st_dev, state.st_ino) if stat.S_ISDIR(state.st_mode) else None


def network_type(folder: Path) -> str | None:
    """The file system type at ``folder`` if other machines may change it, else None."""
    try:
        device = os.stat(folder).st_dev
    except OSError:
        return None
    kind = file_system_types().get(device, "")
    return kind if kind in NETWORK_FILE_SYSTEMS or kind.startswith("fuse.") else None


@dataclass(eq=False)  # one object per folder, used as a key
class Root:
    """One watched folder as last seen."""

    path: Path
    seen: Identity
    network: str | None

    @classmethod
    def look(cls, path: Path) -> Root:
        return cls(path, identity(path), network_type(path))

    @property
    def present(self) -> bool:
        return self.seen is not None

    def changed(self) -> bool:
        """Whether another folder (or none) is there since the last look; looks again."""
        now = identity(self.path)
        if now == self.seen:
            return False
        self.seen, self.network = now, network_type(self.path)
        return True

    def holding(self, path: str) -> str | None:
        """``path`` relative to this folder, or None if it is elsewhere."""
        relative = os.path.relpath(path, self.path)
        return None if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative
