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

import os
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from dreamsearch.errors import ImageError
from dreamsearch.layout import LibraryLayout, library_dir
from dreamsearch.reading import read_file

#: How long the CLI waits for the server to answer that it is there.
HEALTH_TIMEOUT_S = 2.0
#: How long an embedding through the server may take (it queues behind other work).
EMBED_TIMEOUT_S = 600.0


class WarmServer:
    """A running server of this library, reached through its private socket."""

    def __init__(self, socket_path: Path) -> None:
        import httpx  # only when a server's socket is there

        self.socket_path = socket_path
        self._httpx = httpx
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://localhost", timeout=EMBED_TIMEOUT_S
        )

    @classmethod
    def find(cls, socket_path: Path) -> WarmServer | None:
        """The server listening at ``socket_path``, if one answers there."""
        if not socket_path.is_socket():
            return None
        server = cls(socket_path)
        try:
            server._client.get("/api/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
        except server._httpx.HTTPError:
            server.close()
            return None
        return server

    def embed(self, label: str, data: bytes, model: str) -> ServedVector:
        """Start embedding the picture file ``data`` (named ``label`` in errors) by ``model``;
        the answer is read from the returned :class:`ServedVector`, or from the one that
        ``ask_ahead`` started for this file."""
        ahead = _AHEAD.pop((self.socket_path, label, model), None)
        return ahead or ServedVector(partial(self._post, label, data, model))

    def _post(self, label: str, data: bytes, model: str) -> Answer:
        try:
            answer = self._client.post("/api/embed", files={"image": (Path(label).name, data)}, data={"model": model})
        except self._httpx.HTTPError:
            return None
        if answer.status_code == 415:
            raise ImageError(label, _reason(answer, Path(label).name))
        if answer.status_code != 200:
            return None
        document = answer.json()
        if document.get("model") != model:
            return None
        return np.asarray(document["vector"], dtype=np.float32), str(document.get("fingerprint")), data

    def close(self) -> None:
        self._client.close()


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
            ask = partial(_ask_alone, socket_path, str(path), read.data, model)
            _AHEAD[(socket_path, str(path), model)] = ServedVector(ask)
    return True


def _ask_alone(socket_path: Path, label: str, data: bytes, model: str) -> Answer:
    server = WarmServer.find(socket_path)
    if server is None:
        return None
    try:
        return server._post(label, data, model)
    finally:
        server.close()


#: What a server said of a picture: its vector, the weights' fingerprint, the bytes sent.
Answer = tuple[np.ndarray, str, bytes] | None
#: The files ``ask_ahead`` sent, by (socket, path, model), each taken once.
_AHEAD: dict[tuple[Path, str, str], ServedVector] = {}


def _reason(answer, name: str) -> str:
    """The server's reason, without the file name it puts first (the CLI names the path)."""
    try:
        detail = str(answer.json()["detail"])
    except (ValueError, KeyError, TypeError):  # not JSON, or not an error document
        return f"the server could not read it (HTTP {answer.status_code})"
    return detail.removeprefix(f"{name}: ")
