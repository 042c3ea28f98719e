"""``dreamsearch watch``: keep the library in step with folders as they change (docs/watch.md)."""

from __future__ import annotations

import signal

import click

from dreamsearch.cli.common import (
    DEVICE_CHOICES,
    folders_argument,
    library_option,
    models_option,
    watch_options,
    weights_dir_option,
)


@click.command("watch")
@folders_argument
@models_option("Model to embed with; repeat for several.")
@library_option
@watch_options
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths or names matching GLOB (repeatable).")
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings (and --json lines).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per committed batch.")
@weights_dir_option
def watch(
    folders, model_names, library_path, settle, rescan_every, exclude, device, quiet, as_json, weights_dir
) -> None:
    """Index FOLDERS once to catch up, then follow their changes: new and changed photos
    are indexed once written, deleted ones forgotten, moves and copies reuse their vectors.
    Stop with Ctrl-C (the work done is kept)."""
    import json
    import time

    from dreamsearch.api import IndexOptions, Library
    from dreamsearch.watcher.loop import Watcher

    def on_batch(document: dict) -> None:
        if as_json:
            click.echo(json.dumps(document))
        elif not quiet:
            counts = ", ".join(f"{key} {document[key]}" for key in ("added", "changed", "removed", "moved", "failed"))
            click.echo(f"{time.strftime('%H:%M:%S')} {document['reason']}: {counts}", err=True)

    def say(line: str) -> None:
        if not quiet or line.startswith(("warning:", "error:")):
            click.echo(line, err=True)

    with Library.open(library_path, weights_dir=weights_dir, device=device) as library:
        for name in model_names:
            library.pending_model(name)  # missing weights: one line now, not at the first photo
        options = IndexOptions(exclude=tuple(exclude))
        watcher = Watcher(library, folders, model_names, settle, rescan_every, say, on_batch, options)

        def interrupted(signum, frame) -> None:
            if watcher.stop.is_set():
                raise KeyboardInterrupt
            watcher.stop.set()  # a run in flight commits what is embedded first

        previous = signal.signal(signal.SIGINT, interrupted)
        try:
            watcher.run()
        finally:
            signal.signal(signal.SIGINT, previous)
    if not quiet:
        click.echo("stopped: the work done is saved", err=True)
