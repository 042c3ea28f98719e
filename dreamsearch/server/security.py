"""Who may talk to the server and what they may have it do: loopback by default, a bearer
token for anything else, Host headers checked against DNS rebinding, request bodies capped,
index jobs only inside the allowed folders."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dreamsearch.errors import DreamsearchError
from dreamsearch.server.private_socket import came_through

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: Longest path the system opens (Linux's PATH_MAX).
PATH_MAX = 4096
#: Largest request body that is not an upload: a vector of the widest model (2,048
#: numbers) is ~50 KB of JSON, and a long list of folders is less.
MAX_JSON_BODY = 1024**2


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    #: Largest request body accepted (an upload), in bytes.
    max_body: int = 50 * 1024**2
    #: Folders that index jobs may name (with their sub-folders), besides the indexed ones.
    allow_folders: tuple[str, ...] = ()
    #: The library owner's Unix socket (``private_socket``): requests through it need no token.
    private_socket: Path | None = None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond this machine without a token: the API reads and serves the
    library's files and can start index jobs."""
    if not is_loopback(settings.host) and not settings.token:
        raise DreamsearchError(
            f"--host {settings.host} is reachable from other machines: set --token "
            f"(or $DREAMSEARCH_TOKEN), then send 'Authorization: Bearer TOKEN'"
        )


def read_token_file(path: str) -> str:
    """The token in ``path`` (its first line), from a file only its owner can read: a token
    on the command line is visible to every local user in ``ps``."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            token = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DreamsearchError(
            f"--token-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    if info.st_mode & 0o077:
        raise DreamsearchError(
            f"--token-file {path} can be read by other users (mode {info.st_mode & 0o777:04o}); run: chmod 600 {path}"
        )
    if not token:
        raise DreamsearchError(f"--token-file {path} is empty")
    return token


class FolderNotAllowed(DreamsearchError):
    """An index job for a folder outside those this server may index (HTTP 403)."""


def check_folder_allowed(folder: str, allowed: Iterable[str]) -> None:
    """Refuse to index ``folder`` unless its real path (links resolved) is one of the
    ``allowed`` folders or inside one: loopback is not a user boundary, and without this any
    local user could have the server index, and then serve, another user's photos (issue 21).
    A path that is not absolute is left to the job's own checks (400)."""
    if "\x00" in folder or not os.path.isabs(folder):
        return
    if len(folder.encode("utf-8", "surrogatepass")) > PATH_MAX:  # realpath's walk is quadratic in its parts
        raise DreamsearchError(f"a folder path of {len(folder):,} characters is longer than any path can be")
    try:
        real = os.path.realpath(folder)
    except ValueError:  # a lone surrogate that no file name can hold
        raise DreamsearchError(f"{folder!r} is not a path this system can hold") from None
    for root in allowed:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return
    raise FolderNotAllowed(
        f"{folder!r} is outside the folders this server may index "
        f"(the indexed ones, and those given with --allow-folder)"
    )


class Guard:
    """ASGI middleware: Host check (loopback binds accept loopback names only, so a web
    page that rebinds its DNS name to 127.0.0.1 is refused), bearer token on ``/api``,
    and the body cap (413 before the body is read, when Content-Length says so)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, detail = refusal
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
            await JSONResponse({"detail": detail}, status_code=status, headers=extra)(scope, receive, send)
            return
        over = _Over(self._body_limit(headers))
        await self.app(scope, over.receive(receive), over.send(scope, receive, send))

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if is_loopback(self.settings.host):
            name = _host_name(headers.get("host", ""))
            if not is_loopback(name):
                return 400, f"unexpected Host header {headers.get('host', '')!r}: this server answers to localhost only"
        origin = headers.get("origin")
        if origin and origin not in self.settings.cors_origins:  # "null" (sandboxed pages) too
            origin_host = _host_name(urlsplit(origin).netloc)
            if not (is_loopback(origin_host) or origin_host == _host_name(headers.get("host", ""))):
                # a page elsewhere posting to this server (a "simple" CORS request needs no
                # preflight): refused, unless --cors-origin names it
                return 403, f"cross-site request from {origin} refused (allow it with --cors-origin)"
        if (
            self.settings.token
            and scope["path"].startswith("/api")
            and not came_through(scope, self.settings.private_socket)
        ):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                given.strip().encode(), self.settings.token.encode()
            ):
                return 401, "missing or wrong bearer token"
        length, limit = headers.get("content-length", ""), self._body_limit(headers)
        if length.isdigit() and int(length) > limit:
            return 413, f"request body of {int(length):,} bytes is over the limit of {limit:,}"
        return None

    def _body_limit(self, headers: dict[str, str]) -> int:
        """Uploads (multipart) up to ``max_body``; any other body (JSON) up to
        ``MAX_JSON_BODY``: a 24 MB vector took 6-8 s and 0.6 GB to parse before its length
        was checked (issue 21)."""
        if headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return self.settings.max_body
        return min(self.settings.max_body, MAX_JSON_BODY)


class BodyTooLarge(Exception):
    """A body without Content-Length (chunked) that grew past the cap."""


class _Over:
    """Counts a body as it arrives and stops it at the cap. Whatever the app then answers
    (form parsers turn any error into their own 400), the client gets the 413."""

    def __init__(self, limit: int) -> None:
        self.limit, self.seen, self.exceeded = limit, 0, False

    def receive(self, receive: Receive) -> Receive:
        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                self.seen += len(message.get("body", b""))
                if self.seen > self.limit:
                    self.exceeded = True
                    raise BodyTooLarge(f"request body is over the limit of {self.limit:,} bytes")
            return message

        return counted

    def send(self, scope: Scope, receive: Receive, send: Send) -> Send:
        async def answered(message):
            if not self.exceeded:
                await send(message)
            elif message["type"] == "http.response.start":
                detail = f"request body is over the limit of {self.limit:,} bytes"
                await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)

        return answered


def _host_name(host: str) -> str:
    """``[::1]:8000`` → ``::1``; ``localhost:8000`` → ``localhost``."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
