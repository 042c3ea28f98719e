"""What every response tells the browser, so that nothing the server sends runs as a page
of its origin except the UI itself, and no other site can frame it or embed its answers.

Why (issue 21): a JPEG that was also HTML, saved as ``holiday.html``, was served
``text/html`` inline; in Chromium its script read ``/api/status``, also when framed by
another page or opened from the UI's "Open" button. Originals now get their type from the
decoded format (``files.py``) and a ``sandbox`` policy; and every response here says:

- ``X-Content-Type-Options: nosniff``: the declared type is the type;
- a strict ``Content-Security-Policy`` (scripts, styles and connections from this server
  only, no inline script, ``frame-ancestors 'none'``) and ``X-Frame-Options: DENY``;
- ``Cross-Origin-Resource-Policy: same-origin`` (unless ``--cors-origin`` lets web apps in):
  another site's ``<img>`` cannot show a thumbnail, or learn a photo's size from one.

A route may send a stricter policy of its own (originals do); it is kept. An unexpected
error becomes a one-line JSON 500 with these headers (the traceback goes to the log).
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The server's log: uvicorn's, which ``serve`` sets up and keeps from flooding (logs.py).
log = logging.getLogger("uvicorn.error")

#: The UI has no inline script or style; ``blob:`` and ``data:`` pictures are the previews
#: and images it fetches with the token. Swagger UI (``/docs``) works under it as well.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
INTERNAL_ERROR = "internal error (the server log has the details)"


class SecurityHeaders:
    """ASGI middleware, added last so that it wraps every other (the Guard's refusals too)."""

    def __init__(self, app: ASGIApp, cross_origin: bool = False) -> None:
        self.app = app
        self.fixed = {
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": PAGE_POLICY,
        }
        if not cross_origin:
            self.fixed["Cross-Origin-Resource-Policy"] = "same-origin"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in self.fixed.items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception:
            if started:  # too late for an answer: the connection is cut
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)(scope, receive, with_headers)
