"""A CLI's embedding handed to a running ``dreamsearch serve`` of the same library.

A cold ``dreamsearch query`` spends seconds to a minute importing torch and loading its
model, for a forward pass of a fraction of a second (issue 23). When a server of the same
library is running, its models are loaded already: the CLI sends it the query file's bytes
through the server's private socket (``dreamsearch.server.private_socket``) and gets the
vector back. Everything else (reading the catalog, searching, printing) stays in the CLI,
so what it prints is exactly what it prints without a server.

The server's vector is used only if it comes from the weights that made the library's
vectors (same fingerprint). A server that is busy (503), refuses the picture for its own
upload limits (413), does not serve the model (400) or is gone leaves the work to the CLI.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from dreamsearch.errors import ImageError
from dreamsearch.layout import LibraryLayout, library_dir
from dreamsearch.reading import read_file

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: How long the CLI waits for the server to answer that it is there.
HEALTH_TIMEOUT_S = 2.0
#: How long an embedding through the server may take (it queues behind other work).
EMBED_TIMEOUT_S = 600.0


class WarmServer:
    """A running server of this library, reached through its private socket. Spoken to
    with the standard library's HTTP client: importing httpx took a warm query ~0.2 s of
    its ~1.2 s on 2 cores, for two requests."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    @classmethod
    def find(cls, socket_path: Path) -> WarmServer | None:
        """The server listening at ``socket_path``, if one answers there."""
        if not socket_path.is_socket():
            return None
        server = cls(socket_path)
        answer = server._request("GET", "/api/health", HEALTH_TIMEOUT_S)
        return server if answer is not None and answer[0] == 200 else None

    def embed(self, label: str, data: bytes, model: str) -> ServedVector:
        """Start embedding the picture file ``data`` (named ``label`` in errors) by ``model``;
        the answer is read from the returned :class:`ServedVector`, or from the one that
        ``ask_ahead`` started for this file."""
        ahead = _AHEAD.pop((self.socket_path, label, model), None)
        return ahead or ServedVector(partial(self._post, label, data, model))

    def _post(self, label: str, data: bytes, model: str) -> Answer:
        name = _sent_name(label)
        boundary = secrets.token_hex(16)
        body = b"".join(
            [
                _part(boundary, 'name="model"', model.encode()),
                _part(boundary, f'name="image"; filename="{name}"', data),
                f"--{boundary}--\r\n".encode(),
            ]
        )
        answer = self._request("POST", "/api/embed", EMBED_TIMEOUT_S, body, f"multipart/form-data; boundary={boundary}")
        if answer is None:
            return None
        status, document = answer
        if status == 415:
            raise ImageError(label, _reason(status, document, name))
        if status != 200 or not isinstance(document, dict) or document.get("model") != model:
            return None
        import numpy as np  # here: the request went out before NumPy's ~45 ms import

        return np.asarray(document["vector"], dtype=np.float32), str(document.get("fingerprint")), data

    def _request(
        self, method: str, path: str, timeout: float, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, object] | None:
        """``(status, the JSON document or None)``, or None when the server did not answer."""
        connection = _UnixConnection(self.socket_path, timeout)
        try:
            connection.request(method, path, body, {"Content-Type": content_type} if content_type else {})
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the server's Unix socket."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._socket_path))


def _part(boundary: str, disposition: str, content: bytes) -> bytes:
    """One part of a ``multipart/form-data`` body."""
    return f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode() + content + b"\r\n"


def _sent_name(label: str) -> str:
    """The name the picture is sent under: ``query`` and the file's suffix if it is plain
    letters and digits. The server names the file in its errors, and the CLI puts its own
    path in their place; a name with quotes or backslashes comes back changed by the form
    encoding, so the user's name is never sent."""
    suffix = Path(label).suffix
    return "query" + (suffix if suffix[1:].isascii() and suffix[1:].isalnum() else "")


class ServedVector:
    """A picture being embedded by the server, in a thread of its own: the CLI opens the
    catalog and the index meanwhile, so a warm query costs the longer of the two, not both."""

    def __init__(self, ask: Callable[[], Answer]) -> None:
        self._answer: Answer = None
        self._error: ImageError | None = None
        self._thread = threading.Thread(target=self._wait_for, args=(ask,), name="dreamsearch-served", daemon=True)
        self._thread.start()

    def _wait_for(self, ask: Callable[[], Answer]) -> None:
        try:
            self._answer = ask()
        except ImageError as exc:
            self._error = exc

    def vector(self, data: bytes, fingerprint: str) -> np.ndarray | None:
        """The server's vector of the file ``data`` if it was made from these very bytes by
        the weights ``fingerprint`` (those that made the library's vectors); None when the
        CLI should embed the picture itself. A picture the server cannot decode raises
        :class:`ImageError` with the server's reason."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._answer is None:
            return None
        vector, made_by, sent = self._answer
        return vector if made_by == fingerprint and sent == data else None


def ask_ahead(library: str | os.PathLike | None, files: Sequence[Path], model: str) -> bool:
    """Send the query files to a running server of ``library`` before this process imports
    the catalog layer (~0.5 s on 2 cores): the server embeds while it does.
    ``WarmServer.embed`` of the same file and model then waits for that answer instead of
    asking again. False when no server's socket is there."""
    socket_path = LibraryLayout(library_dir(library)).serve_socket_path
    if not socket_path.is_socket():  # no server: nothing imported, nothing started
        return False
    for path in files:
        read = read_file(str(path))
        if not read.error:  # else told by the query's own read, in its words
            # no health check first: a server that is gone refuses the connection at once
            ask = partial(WarmServer(socket_path)._post, str(path), read.data, model)
            _AHEAD[(socket_path, str(path), model)] = ServedVector(ask)
    return True


#: What a server said of a picture: its vector, the weights' fingerprint, the bytes sent.
Answer: TypeAlias = "tuple[np.ndarray, str, bytes] | None"
#: The files ``ask_ahead`` sent, by (socket, path, model), each taken once.
_AHEAD: dict[tuple[Path, str, str], ServedVector] = {}


def _reason(status: int, document: object, name: str) -> str:
    """The server's reason, without the file name it puts first (the CLI names the path)."""
    if not isinstance(document, dict) or "detail" not in document:
        return f"the server could not read it (HTTP {status})"
    return str(document["detail"]).removeprefix(f"{name}: ")
