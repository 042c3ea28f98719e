"""Where dreamsearch keeps things (a command-line flag, else an environment variable, else
the platform's per-user folder), and how paths and sizes are shown to people."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path


def configured_path(explicit: str | os.PathLike | None, env_var: str, kind: str, name: str) -> Path:
    """``explicit``, else ``$env_var``, else ``<user {kind} dir>/dreamsearch/<name>``
    (``kind``: ``cache`` for re-downloadable files, ``data`` for the user's own)."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(env_var):
        return Path(os.environ[env_var]).expanduser()
    import platformdirs

    folder = (
        platformdirs.user_cache_dir("dreamsearch") if kind == "cache" else platformdirs.user_data_dir("dreamsearch")
    )
    return Path(folder) / name


def printable(text: str) -> str:
    """``text`` safe to print on any terminal: bytes of file names that are not valid
    UTF-8 (held by Python as lone surrogates) are shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def problem_line(path: str | os.PathLike[str], reason: str) -> str:
    """``PATH: reason`` on exactly one line, whatever the name or the reason hold (a
    newline in either would read as a second, forged record)."""
    return f"{display_path(path)}: {' '.join(printable(str(reason)).split())}"


def kept_folder_warning(folder: str | os.PathLike[str], gone: int, indexed: int) -> str:
    """The warning for a folder that lost so many files in one run that they were kept
    (``IndexReport.kept_folders``): said by ``index`` and by ``watch`` alike."""
    shown = display_path(folder)
    return (
        f"warning: {shown}: {gone} of its {indexed} indexed files are gone from disk, so they were kept "
        f"(an unmounted drive?); if they were really deleted, run `dreamsearch index --prune {shown}`"
    )


def display_path(path: str | os.PathLike[str]) -> str:
    r"""``path`` as one unambiguous line, for tables and line-oriented output (``skipped
    PATH: reason``), where a newline in a name would otherwise read as a second, forged
    record. A name is shown as is unless it holds a character that does not print (a
    control, format or line-separator character, or a byte that is not UTF-8) or starts
    with ``$'``; then it is quoted the way GNU ``ls`` and bash do, ``$'a\nb.jpg'``: ``\t
    \n \r \\ \'``, ``\xHH`` for other ASCII controls and for undecodable bytes,
    ``\uHHHH`` / ``\UHHHHHHHH`` for other characters. Different names never display the
    same, and the quoted form pasted into bash gives back the exact bytes."""
    text = os.fspath(path)
    if text.startswith("$'") or not all(map(_prints, text)):
        return "$'" + "".join(map(_quoted, text)) + "'"
    return text


def short_path(path: str | os.PathLike[str], width: int | None = None) -> str:
    """``path`` for a table cell, where the file name is what matters: relative to the
    current folder or ``~/``, whichever is shorter (absolute under neither), through
    :func:`display_path`; past ``width`` terminal cells, folders from the middle give way to
    ``…`` (the file name is never cut; a shortened path names no file, so machine formats
    keep whole paths)."""
    from rich.cells import cell_len

    text = _nearest(os.fspath(path))
    shown = display_path(text)
    *folders, name = text.split("/")
    for dropped in range(1, len(folders) + 1):
        if width is None or cell_len(shown) <= width:
            break
        head = (len(folders) - dropped + 1) // 2
        shown = display_path("/".join([*folders[:head], "…", *folders[head + dropped :], name]))
    return shown


def _nearest(path: str) -> str:
    """``path`` relative to the current folder or to ``~/`` when under one (the shorter)."""
    forms = [path]
    try:
        here = os.path.join(os.getcwd(), "")
    except OSError:  # the current folder was removed
        here = None
    if here and path.startswith(here):
        forms.append(path[len(here) :])
    home = os.path.join(os.path.expanduser("~"), "")
    if os.path.isabs(home) and path.startswith(home):
        forms.append("~/" + path[len(home) :])
    return min(forms, key=len)


_NAMED_ESCAPES = {"\\": "\\\\", "'": "\\'", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _prints(char: str) -> bool:
    """Shown as itself: printable, or a space of any width (U+3000 in Japanese names)."""
    return char.isprintable() or unicodedata.category(char) == "Zs"


def _quoted(char: str) -> str:
    code = ord(char)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode holds it
        return f"\\x{code - 0xDC00:02x}"
    if _prints(char):
        return char
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def human_bytes(size: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
