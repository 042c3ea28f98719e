"""One log record per kind of problem per interval, however many connections have it.

Under a flood of connections past the descriptor limit, asyncio logged a traceback for
every failed ``accept``: 86 MB of log in 15 s here (issue 21: 63 MB in 45 s). The first
record of a kind (its logger, first line and exception type) passes as it is; the others
in the same interval are counted, and the count rides on the next one that passes.
"""

from __future__ import annotations

import logging
import threading
import time

#: Loggers that speak for each connection or request: uvicorn's and asyncio's.
NOISY_LOGGERS = ("uvicorn.error", "uvicorn.access", "asyncio")
#: Kinds remembered at most; beyond that the oldest are forgotten (each then passes once more).
MAX_KINDS = 1_000


class OncePerInterval(logging.Filter):
    """Passes the first record of each kind per ``interval`` seconds."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._kinds: dict[tuple, list] = {}  # kind -> [interval start, records held back]

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        kind = (record.name, record.levelno, str(record.msg).split("\n", 1)[0], error)
        now = time.monotonic()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                return False
            held_back = seen[1] if seen else 0
            if len(self._kinds) >= MAX_KINDS:
                self._kinds.pop(next(iter(self._kinds)))
            self._kinds.pop(kind, None)
            self._kinds[kind] = [now, 0]
        if held_back:
            record.msg = f"{record.msg} [{held_back} more like this in the last {self.interval:g} s not logged]"
        return True


def limit_noisy_logs(interval: float = 60.0) -> OncePerInterval:
    """Put one shared :class:`OncePerInterval` on the per-connection loggers."""
    once = OncePerInterval(interval)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(once)
    return once
