"""What an HTTP error may say: what the client sent and why it failed, never where the
server keeps things.

Why (issue 21): errors named the weights folder (a model without weights answered with the
folder and the command that fills it), the library folder, and FAISS's C++ source path (an
index job on a full disk). Messages are written for the person at the terminal; over HTTP
the same line goes out with each internal path replaced by what it is, and the full line
goes to the server log.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from dreamsearch.errors import WeightsError

#: The server's log: uvicorn's, which ``serve`` sets up and keeps from flooding (logs.py).
log = logging.getLogger("uvicorn.error")

#: FAISS's "Error in <signature> at <file>:<line>: " prefix, and any source location left.
_CPP_ERROR = re.compile(r"Error in .*? at \S+:\d+: ")
_SOURCE = re.compile(r"\S*\.(?:cpp|cc|cxx|hpp|h|cu|py|pyx)(?::\d+)+:?")


class Redactor:
    """``redactor(message)`` is ``message`` as a client may read it; ``internals`` maps the
    server's own folders (library, weights, Python) to the words that replace them."""

    def __init__(self, internals: Mapping[str, str]) -> None:
        folders = {str(Path(p)): name for p, name in internals.items() if p and str(Path(p)) != "/"}
        folders |= {
            str(Path(p).resolve()): name for p, name in internals.items() if p and Path(p).resolve() != Path("/")
        }
        ordered = sorted(folders, key=len, reverse=True)  # /lib/index before /lib
        self._names = folders
        # a folder, then the end of a path component: /srv/lib never matches /srv/library
        self._folders = (
            re.compile("|".join(re.escape(p) + r"(?![^/\s'\"`(),;:])" for p in ordered)) if ordered else None
        )

    def __call__(self, message: str) -> str:
        text = _SOURCE.sub("", _CPP_ERROR.sub("", message))
        if self._folders is not None:
            text = self._folders.sub(lambda m: self._names[m.group(0)], text)
        return " ".join(text.split())  # one line

    def error(self, exc: BaseException) -> str:
        """The client's line for ``exc``; what it leaves out goes to the server log."""
        message = str(exc)
        if isinstance(exc, WeightsError):  # the weights folder and how to fill it: the operator's business
            model = re.match(r"model '([^']+)'", message)
            public = (
                f"model '{model[1]}' cannot be loaded on this server"
                if model
                else "a model cannot be loaded on this server"
            ) + " (its weights are missing or unusable)"
        else:
            public = self(message)
        if public != message:
            log.warning("%s (answered: %s)", message, public)
        return public


def library_redactor(library_root: str | Path, weights: str | Path | None) -> Redactor:
    """The redactor of a server over ``library_root`` with its weights in ``weights``."""
    return Redactor(
        {
            str(library_root): "<library>",
            str(weights or ""): "<weights folder>",
            sys.prefix: "<python>",
            sys.base_prefix: "<python>",
            str(Path(__file__).resolve().parents[2]): "<dreamsearch>",
        }
    )
