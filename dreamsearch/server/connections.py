"""Connections that cannot take the server down: a request must arrive in time, and the
number of open connections stays below the file descriptor limit.

uvicorn 0.55 has neither: a connection that sends one header byte stays open forever,
and under ``ulimit -n 1024`` 1,100 such connections made ``accept`` fail with EMFILE, so
``/api/health`` answered 0 of 7 probes (issue 21). Here a request's headers must arrive
within ``request_timeout`` seconds of its first byte (or of the connection), and its body
may not pause longer than that. At ``--limit-concurrency`` open connections, a new one
closes the oldest connection that has no request in progress (idle, or still sending
headers); if every one is busy, the new one is closed.
"""

from __future__ import annotations

import asyncio
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Descriptors kept for everything but client connections: the catalog, index files,
#: originals being sent, weights, logs, and the sockets ``accept`` takes in one go
#: (``backlog_for``) before the new connections are counted.
RESERVED_DESCRIPTORS = 256
#: Connections accepted per event-loop turn at most (and the listen backlog).
BACKLOG = 128


def _open_files_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_connection_limit() -> int:
    """Open connections allowed by default: the descriptor limit less the reserve."""
    soft = _open_files_limit()
    return max(8, soft - RESERVED_DESCRIPTORS) if soft > 2 * RESERVED_DESCRIPTORS else max(8, soft // 2)


def backlog_for(limit: int) -> int:
    """Connections ``accept`` may take in one turn, before any is counted: half of what
    the descriptor limit leaves beyond ``limit``, so those never run out either."""
    return max(8, min(BACKLOG, (_open_files_limit() - limit) // 2))


def guarded_protocol(request_timeout: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with the request timeout and the connection cap (which
    it takes from ``Config.limit_concurrency``); a class per server, holding its state."""
    return type("GuardedH11Protocol", (_Guarded,), {"request_timeout": request_timeout, "idle": {}})


class _Guarded(H11Protocol):
    request_timeout: float
    #: Connections with no request in progress, oldest first: the first to close for a new one.
    idle: dict[_Guarded, None]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        limit = self.config.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            oldest = next(iter(self.idle), None)
            if oldest is None:  # every connection has a request in progress
                transport.abort()
                return
            self.idle.pop(oldest)
            oldest.transport.abort()
        self.idle[self] = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:
            return  # headers still coming: the deadline stands
        self.idle.pop(self, None)
        if state is h11.SEND_BODY:
            self._arm()  # the body may pause, not stall
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.idle[self] = None  # uvicorn's keep-alive timeout closes it if nothing comes

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()
