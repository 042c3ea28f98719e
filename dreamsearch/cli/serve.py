"""``dreamsearch serve``: the HTTP API and web UI for photo apps (docs/serve.md)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import replace

import click
from click.core import ParameterSource

from dreamsearch.cli.common import (
    DEVICE_CHOICES,
    ByteSize,
    library_option,
    model_list,
    precision_option,
    watch_options,
    weights_dir_option,
)
from dreamsearch.models.registry import DEFAULT_MODEL

#: How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
#: A light request (status: ~20 ms of SQL and I/O) gives the GIL back at each call into C
#: and waits up to this long to take it again while the decoding lanes' threads run
#: Python code; at 5 ms its p99 under saturation was ~20% higher (benchmarks/serve_load.py).
GIL_SWITCH_INTERVAL_S = 0.001


@click.command()
@library_option
@click.option(
    "--watch",
    "watch_all",
    is_flag=True,
    help="Keep every indexed folder in step as it changes (docs/watch.md); searches see each batch at once.",
)
@click.option(
    "--watch-folder",
    "watch_folders",
    multiple=True,
    metavar="DIR",
    type=click.Path(exists=True, file_okay=False),
    help="With --watch: watch DIR (repeatable) instead.",
)
@watch_options
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on; anything but loopback needs --token."
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option(
    "--token",
    envvar="DREAMSEARCH_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on every /api route (or $DREAMSEARCH_TOKEN).",
)
@click.option(
    "--token-file",
    default=None,
    metavar="PATH",
    help="Read the token from this file (readable by its owner only), so that `ps` does not show it.",
)
@click.option(
    "--allow-folder",
    "allow_folders",
    multiple=True,
    metavar="DIR",
    help="Let POST /api/index index DIR and its sub-folders (repeatable); the indexed folders always are.",
)
@click.option(
    "--models",
    "names",
    default=DEFAULT_MODEL,
    show_default=True,
    callback=model_list,
    help="Comma-separated models to load at start-up; the first is the default.",
)
@click.option(
    "--unload-after",
    type=click.FloatRange(min=1),
    default=None,
    metavar="SECONDS",
    help="Free the models after this long without a query (loaded again on demand).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Allow a web app at ORIGIN to call the API from a browser (repeatable; off by default).",
)
@click.option("--max-upload", default="50MB", show_default=True, type=ByteSize(), help="Largest request body.")
@click.option(
    "--max-upload-pixels",
    default=50_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="Largest uploaded picture decoded (width x height); larger ones get 413.",
)
@click.option(
    "--load-models-on-request",
    is_flag=True,
    help="Let requests name models not in --models (loaded then, at most --max-loaded-models kept).",
)
@click.option(
    "--max-loaded-models",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --load-models-on-request: models kept loaded, least recently used let go first "
    "[default: the number of --models plus one].",
)
@click.option(
    "--limit-concurrency",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Open connections at most [default: the open-files limit less 256].",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="A request's headers must arrive within this, and its body may not pause longer.",
)
@click.option(
    "--thumbnail-cache",
    default="2GB",
    show_default=True,
    type=ByteSize(),
    metavar="SIZE",
    help="Disk kept for thumbnails in the library folder; the least recently used go first.",
)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@precision_option(None)
@weights_dir_option
def serve(
    library_path,
    host,
    port,
    token,
    names,
    unload_after,
    cors_origins,
    max_upload,
    device,
    precision,
    weights_dir,
    max_upload_pixels,
    load_models_on_request,
    max_loaded_models,
    limit_concurrency,
    request_timeout,
    token_file,
    allow_folders,
    thumbnail_cache,
    watch_all,
    watch_folders,
    settle,
    rescan_every,
) -> None:
    """Serve the library over HTTP: a JSON API for photo apps (OpenAPI at /docs) and a web
    UI at /. Models load once and stay warm; prints the URL it listens on."""
    import uvicorn

    from dreamsearch.api import Library
    from dreamsearch.errors import DreamsearchError
    from dreamsearch.server.app import create_app
    from dreamsearch.server.connections import backlog_for, default_connection_limit, guarded_protocol
    from dreamsearch.server.limits import Limits, heavy_slots
    from dreamsearch.server.logs import limit_noisy_logs
    from dreamsearch.server.private_socket import PrivateSocket
    from dreamsearch.server.security import Settings, check_bind, read_token_file

    if token_file is not None:
        if token:
            raise DreamsearchError("give the token once: --token-file, or --token / $DREAMSEARCH_TOKEN")
        token = read_token_file(token_file)
    elif token and click.get_current_context().get_parameter_source("token") == ParameterSource.COMMANDLINE:
        click.echo(
            "warning: other users of this machine can read --token in the process list; "
            "use --token-file or $DREAMSEARCH_TOKEN",
            err=True,
        )
    settings = Settings(
        host=host,
        token=token,
        cors_origins=tuple(cors_origins),
        max_body=max_upload,
        allow_folders=tuple(os.path.abspath(folder) for folder in allow_folders),
    )
    check_bind(settings)
    if not names:
        raise DreamsearchError("--models needs at least one model name")
    if max_loaded_models is not None and max_loaded_models < len(names):
        raise DreamsearchError(f"--max-loaded-models {max_loaded_models} is fewer than the {len(names)} --models")
    kept = (max_loaded_models or len(names) + 1) if load_models_on_request else None
    library = Library.open(
        library_path, weights_dir=weights_dir, device=device, max_loaded_models=kept, precision=precision
    )
    for name in names:
        library.pending_model(name)  # weights present? fail now, with the usual message
    limits = Limits(
        heavy_slots=heavy_slots(device),
        max_upload_pixels=max_upload_pixels,
        load_models_on_request=load_models_on_request,
    )
    private = PrivateSocket(library.layout.serve_socket_path)
    if private.skipped:
        click.echo(f"note: {private.skipped}", err=True)
    settings = replace(settings, private_socket=private.path if private.listener else None)
    watcher = None
    if watch_all or watch_folders:
        from dreamsearch.watcher.loop import Watcher

        folders = list(watch_folders) or (library.folders() if library.layout.catalog_path.exists() else [])
        if not folders:
            raise DreamsearchError("--watch: the library has no indexed folder yet; name one with --watch-folder")
        watcher = Watcher(library, folders, names, settle, rescan_every, say=lambda line: click.echo(line, err=True))
    app = create_app(library, names, settings, unload_after, limits, thumbnail_cache=thumbnail_cache, watcher=watcher)
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    # Answers go out at once: asyncio sets TCP_NODELAY only on sockets made with proto=TCP,
    # and without it each kept-alive response waited ~40 ms for the client's delayed ACK
    # (benchmarks/serve_latency.py: by-id p50 63 ms -> 20 ms). Accepted sockets inherit it.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bound_port = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"dreamsearch serving {library.layout.root} at http://{shown}:{bound_port}/ (API docs: /docs)", err=False
    )
    connections = limit_concurrency or default_connection_limit()
    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=5,
        backlog=backlog_for(connections),
        http=guarded_protocol(request_timeout),
        limit_concurrency=connections,
    )
    limit_noisy_logs()  # after uvicorn's Config, which sets its loggers up
    server = uvicorn.Server(config)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    signal.signal(signal.SIGTERM, private.remove_then_terminate)
    try:
        server.run(sockets=[listener] + ([private.listener] if private.listener else []))
    finally:
        private.remove()  # Ctrl-C (KeyboardInterrupt) and a normal end
