"""The server's private channel: a Unix socket in the library folder, for this user's CLI.

``dreamsearch query``, ``compare`` and ``embed`` hand their embedding to a running server
of the same library through it (``dreamsearch.warm``), so a query costs a forward pass,
not a model load (issue 23: a cold CLI query took 10-58 s, most of it loading models).
The socket is mode 0600 inside the library folder (0700): only the library's owner can
connect, so requests through it need no token. Anything else stays on the TCP port.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The longest path a Unix socket can have on Linux (``sun_path``, less its NUL).
MAX_SOCKET_PATH = 107


class PrivateSocket:
    """The listening socket at ``path``, or why there is none (``skipped``, one line)."""

    def __init__(self, path: Path) -> None:
        self.path, self.listener, self.skipped = path, None, ""
        if not path.parent.is_dir():
            self.skipped = f"{path.parent}: no library there yet; the CLI will not use this server"
        elif len(os.fsencode(path)) > MAX_SOCKET_PATH:
            self.skipped = f"{path}: too long for a Unix socket; the CLI will not use this server"
        elif _answers(path):
            self.skipped = f"{path}: another dreamsearch serve of this library has it; the CLI uses that one"
        else:
            self.listener = _listen(path)
            self._identity = os.stat(path).st_ino

    def remove(self) -> None:
        """Take the socket file away, unless another server has put its own there since."""
        if self.listener is None:
            return
        self.listener.close()
        try:
            if os.stat(self.path).st_ino == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def remove_then_terminate(self, signum: int, _frame: object) -> None:
        """The SIGTERM handler while serving. uvicorn stops gracefully on SIGTERM, then puts
        back the handler it found and raises the signal again: with the default one the
        process would end there, before any ``finally`` could take the socket away."""
        self.remove()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _answers(path: Path) -> bool:
    """Whether a server listens at ``path``; a file left by one that died is removed."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:  # nobody listens: a stale file
            path.unlink(missing_ok=True)
            return False
        raise
    finally:
        probe.close()


def _listen(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: never, even for an instant, open to others
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    return listener


def came_through(scope: Mapping[str, Any], path: Path | None) -> bool:
    """Whether an ASGI request arrived on the private socket at ``path`` (uvicorn names a
    Unix socket's path as the scope's server, with no port)."""
    server = scope.get("server")
    return path is not None and server is not None and server[1] is None and server[0] == str(path)
