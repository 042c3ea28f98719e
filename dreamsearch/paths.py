"""Where dreamsearch keeps things (a command-line flag, else an environment variable, else
the platform's per-user folder), and how paths and sizes are shown to people."""

from __future__ import annotations

import os
from pathlib import Path


def configured_path(explicit: str | os.PathLike | None, env_var: str, kind: str, name: str) -> Path:
    """``explicit``, else ``$env_var``, else ``<user {kind} dir>/dreamsearch/<name>``
    (``kind``: ``cache`` for re-downloadable files, ``data`` for the user's own)."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(env_var):
        return Path(os.environ[env_var]).expanduser()
    import platformdirs

    folder = platformdirs.user_cache_dir("dreamsearch") if kind == "cache" else platformdirs.user_data_dir("dreamsearch")
    return Path(folder) / name


def printable(text: str) -> str:
    """``text`` safe to print on any terminal: bytes of file names that are not valid
    UTF-8 (held by Python as lone surrogates) are shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def human_bytes(size: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
