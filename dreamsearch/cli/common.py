"""What every ``dreamsearch`` command shares: the error handling that turns expected
failures into one line, the common options, the progress display and sheet writing."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from dreamsearch.errors import DreamsearchError
from dreamsearch.display import printable
from dreamsearch.low_memory import out_of_memory_message

DEVICE_CHOICES = click.Choice(["auto", "cpu", "cuda"])


class ByteSize(click.ParamType):
    """A size such as ``2GiB``, ``500MB`` or ``1000000`` (bytes)."""

    name = "size"
    _UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
              "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("kmgtib")
        try:
            size = float(number) * self._UNITS[text[len(number):]]
        except (ValueError, KeyError):
            self.fail(f"'{value}' is not a size (examples: 500MB, 2GiB, 1000000)", param, ctx)
        if size < 1:
            self.fail(f"'{value}' is not a positive size", param, ctx)
        return int(size)


class CommandGroup(click.Group):
    """Turns expected failures (and running out of memory) into one line on stderr and a
    non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DreamsearchError as exc:
            click.echo(f"error: {printable(str(exc))}", err=True)
            ctx.exit(1)
        except (MemoryError, ImportError, RuntimeError, OSError) as exc:
            message = out_of_memory_message(exc)
            if message is None and not isinstance(exc, OSError):
                raise  # a bug: the traceback is what helps
            if message is None:  # a full disk, a file that went away: say which, in one line
                where = f"{exc.filename}: " if exc.filename else ""
                message = where + (exc.strerror or str(exc))
            click.echo(f"error: {printable(message)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def weights_dir_option(func):
    return click.option(
        "--weights-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="DREAMSEARCH_WEIGHTS",
        help="Folder of model weights (an official DreamSim cache_dir works as is). "
        "Default: $DREAMSEARCH_WEIGHTS or the user cache folder.",
    )(func)


def library_option(func):
    return click.option(
        "--library", "library_path", type=click.Path(file_okay=False, path_type=Path), envvar="DREAMSEARCH_LIBRARY",
        help="Library folder. Default: $DREAMSEARCH_LIBRARY or the user data folder.",
    )(func)


def model_names(ctx: click.Context, param: click.Parameter, value):
    """Click callback for an option or argument naming models (one, or a repeated option):
    a typo fails as the command line is read, with a suggestion, before anything is opened."""
    from dreamsearch.models.registry import get_spec

    for name in [value] if isinstance(value, str) else value:
        get_spec(name)
    return value


def model_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """Click callback for a comma-separated ``--models``: the checked names, without repeats."""
    return model_names(ctx, param, list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip())))


@contextmanager
def progress_display(quiet: bool):
    """Yield the indexer's progress callback: a rich bar on stderr, per image, with what
    each stage has done (only on a terminal: logs stay clean), and the note that Ctrl-C
    was heard, at once, unless ``quiet``."""
    from rich.console import Console

    console = Console(stderr=True)
    heard = False

    def note_stop(report) -> None:
        nonlocal heard
        if report.stopping and not heard and not quiet:
            heard = True
            console.print("stopping: finishing the current batch and saving (Ctrl-C again to stop at once)")

    if quiet or not console.is_terminal:
        yield note_stop
        return
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f} img/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("scanning", total=None, rate=0.0)

        def update(report) -> None:
            note_stop(report)
            bar.update(task, total=report.to_read, completed=report.read,
                       rate=report.embedded / max(time.perf_counter() - started, 1e-9),
                       description=f"read {report.read} · embedded {report.embedded} · "
                                   f"copies {report.copied + report.moved} · failed {report.failed}")

        yield update


def write_sheets(rows, grid: Path | None, html_out: Path | None, title: str) -> None:
    """Write the contact sheet and/or HTML page, and say where (on stderr: stdout may be JSON)."""
    from dreamsearch.contact_sheet import write_html, write_png

    if grid:
        write_png(rows, grid)
        click.echo(f"wrote {printable(str(grid))}", err=True)
    if html_out:
        write_html(rows, html_out, title)
        click.echo(f"wrote {printable(str(html_out))}", err=True)


def stdin_paths() -> list[str]:
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]
