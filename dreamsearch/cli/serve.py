"""``dreamsearch serve``: the HTTP API and web UI for photo apps (docs/serve.md)."""

from __future__ import annotations

import socket

import click

from dreamsearch.cli.common import DEVICE_CHOICES, ByteSize, library_option, model_list, weights_dir_option
from dreamsearch.models.registry import DEFAULT_MODEL


@click.command()
@library_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--token", envvar="DREAMSEARCH_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every /api route (or $DREAMSEARCH_TOKEN).")
@click.option("--models", "names", default=DEFAULT_MODEL, show_default=True, callback=model_list,
              help="Comma-separated models to load at start-up; the first is the default.")
@click.option("--unload-after", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Free the models after this long without a query (loaded again on demand).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow a web app at ORIGIN to call the API from a browser (repeatable; off by default).")
@click.option("--max-upload", default="50MB", show_default=True, type=ByteSize(), help="Largest request body.")
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@weights_dir_option
def serve(library_path, host, port, token, names, unload_after, cors_origins, max_upload, device,
          weights_dir) -> None:
    """Serve the library over HTTP: a JSON API for photo apps (OpenAPI at /docs) and a web
    UI at /. Models load once and stay warm; prints the URL it listens on."""
    import uvicorn

    from dreamsearch.api import Library
    from dreamsearch.errors import DreamsearchError
    from dreamsearch.server.app import create_app
    from dreamsearch.server.security import Settings, check_bind

    settings = Settings(host=host, token=token, cors_origins=tuple(cors_origins), max_body=max_upload)
    check_bind(settings)
    if not names:
        raise DreamsearchError("--models needs at least one model name")
    library = Library.open(library_path, weights_dir=weights_dir, device=device)
    for name in names:
        library.model_handle(name)  # weights present? fail now, with the usual message
    app = create_app(library, names, settings, unload_after)
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    # Answers go out at once: asyncio sets TCP_NODELAY only on sockets made with proto=TCP,
    # and without it each kept-alive response waited ~40 ms for the client's delayed ACK
    # (benchmarks/serve_latency.py: by-id p50 63 ms -> 20 ms). Accepted sockets inherit it.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bound_port = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"dreamsearch serving {library.folder.root} at http://{shown}:{bound_port}/ (API docs: /docs)", err=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[listener])
