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

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from dreamsearch.errors import ImageError

#: How long the CLI waits for the server to answer that it is there.
HEALTH_TIMEOUT_S = 2.0
#: How long an embedding through the server may take (it queues behind other work).
EMBED_TIMEOUT_S = 600.0


class WarmServer:
    """A running server of this library, reached through its private socket."""

    def __init__(self, socket_path: Path) -> None:
        import httpx  # only when a server's socket is there

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
        the answer is read from the returned :class:`ServedVector`."""
        return ServedVector(partial(self._post, label, data, model), data)

    def _post(self, label: str, data: bytes, model: str) -> tuple[np.ndarray, str] | None:
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
        return np.asarray(document["vector"], dtype=np.float32), str(document.get("fingerprint"))

    def close(self) -> None:
        self._client.close()


class ServedVector:
    """A picture being embedded by the server, in a thread of its own: the CLI opens the
    catalog and the index meanwhile, so a warm query costs the longer of the two, not both."""

    def __init__(self, ask: Callable[[], tuple[np.ndarray, str] | None], data: bytes) -> None:
        self.data = data
        self._answer: tuple[np.ndarray, str] | None = None
        self._error: ImageError | None = None
        self._thread = threading.Thread(target=self._wait_for, args=(ask,), name="dreamsearch-served", daemon=True)
        self._thread.start()

    def _wait_for(self, ask: Callable[[], tuple[np.ndarray, str] | None]) -> None:
        try:
            self._answer = ask()
        except ImageError as exc:
            self._error = exc

    def vector(self, fingerprint: str) -> np.ndarray | None:
        """The server's vector if it comes from the weights ``fingerprint`` (those that made
        the library's vectors); None when the CLI should embed the picture itself. A picture
        the server cannot decode raises :class:`ImageError` with the server's reason."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._answer is None or self._answer[1] != fingerprint:
            return None
        return self._answer[0]


def _reason(answer, name: str) -> str:
    """The server's reason, without the file name it puts first (the CLI names the path)."""
    try:
        detail = str(answer.json()["detail"])
    except (ValueError, KeyError, TypeError):  # not JSON, or not an error document
        return f"the server could not read it (HTTP {answer.status_code})"
    return detail.removeprefix(f"{name}: ")
