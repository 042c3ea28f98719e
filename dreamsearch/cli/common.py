"""What every ``dreamsearch`` command shares: the error handling that turns expected
failures into one line, the common options, the progress display and sheet writing."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from dreamsearch.display import printable
from dreamsearch.errors import DreamsearchError
from dreamsearch.low_memory import out_of_memory_message

DEVICE_CHOICES = click.Choice(["auto", "cpu", "cuda"])


class ByteSize(click.ParamType):
    """A size such as ``2GiB``, ``500MB`` or ``1000000`` (bytes)."""

    name = "size"
    _UNITS = {
        "": 1,
        "b": 1,
        "k": 10**3,
        "kb": 10**3,
        "kib": 2**10,
        "m": 10**6,
        "mb": 10**6,
        "mib": 2**20,
        "g": 10**9,
        "gb": 10**9,
        "gib": 2**30,
        "t": 10**12,
        "tb": 10**12,
        "tib": 2**40,
    }

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("kmgtib")
        try:
            size = float(number) * self._UNITS[text[len(number) :]]
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
            message = out_of_memory_message(exc) or mismatched_torchvision_message(exc)
            if message is None:
                if not isinstance(exc, OSError):
                    raise  # a bug: the traceback is what helps
                # a full disk, a file that went away: say which, in one line
                where = f"{exc.filename}: " if exc.filename else ""
                message = where + (exc.strerror or str(exc))
            click.echo(f"error: {printable(message)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def mismatched_torchvision_message(exc: BaseException) -> str | None:
    """One line for a torchvision built for another torch: it fails on import with
    "operator torchvision::nms does not exist", a traceback that names neither package's
    version. torchvision 0.(N+15) goes with torch 2.N."""
    if not isinstance(exc, RuntimeError) or "torchvision::" not in str(exc):
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version, vision_version = version("torch"), version("torchvision")
    except PackageNotFoundError:
        return None
    major, minor = (int(part) for part in torch_version.split("+")[0].split(".")[:2])
    wanted = f" (pip install 'torchvision=={major - 2}.{minor + 15}.*')" if major == 2 else ""
    return (
        f"torchvision {vision_version} was not built for torch {torch_version}: install the torchvision "
        f"release made for this torch{wanted}"
    )


def weights_dir_option(func):
    return click.option(
        "--weights-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="DREAMSEARCH_WEIGHTS",
        help="Folder of model weights (an official DreamSim cache_dir works as is). "
        "Default: $DREAMSEARCH_WEIGHTS or the user cache folder.",
    )(func)


def precision_option(default: str | None):
    """``--precision``: fp32 or the opt-in int8 (``dreamsearch.models.precision``). ``None``
    as the default means each model's precision as the library holds it."""
    held = "Default: as the library's vectors were made (fp32 for a new model)."
    return click.option(
        "--precision",
        type=click.Choice(["fp32", "int8"]),
        default=default,
        show_default=default is not None,
        help="fp32: the official vectors. int8: about 2x faster on a CPU, within cosine 0.995 of fp32 "
        "(pip install 'dreamsearch[int8]'; check it on your photos with `dreamsearch models check`); "
        "its vectors are kept apart from fp32 ones. " + ("" if default else held),
    )


def watch_options(func):
    """``--settle`` and ``--rescan-every``: how ``watch`` and ``serve --watch`` follow folders (docs/watch.md)."""
    func = click.option(
        "--rescan-every",
        type=click.FloatRange(min=1),
        default=600.0,
        show_default=True,
        metavar="SECONDS",
        help="Rescan folders whose changes send no events (network file systems, "
        "or when the inotify watch limit is reached) this often.",
    )(func)
    return click.option(
        "--settle",
        type=click.FloatRange(min=0),
        default=2.0,
        show_default=True,
        metavar="SECONDS",
        help="Index a changed file once its size and time stayed the same this long.",
    )(func)


def library_option(func):
    return click.option(
        "--library",
        "library_path",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="DREAMSEARCH_LIBRARY",
        help="Library folder. Default: $DREAMSEARCH_LIBRARY or the user data folder.",
    )(func)


def folders_argument(func):
    """``FOLDERS...``: existing folders, at least one (``index`` and ``watch``)."""
    return click.argument(
        "folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
    )(func)


def models_option(help: str):
    """``-m/--model``, repeatable, checked as it is read (``index`` and ``watch``)."""
    from dreamsearch.models.registry import DEFAULT_MODEL

    return click.option(
        "-m",
        "--model",
        "model_names",
        multiple=True,
        default=(DEFAULT_MODEL,),
        show_default=True,
        callback=model_names,
        help=help,
    )


def model_names(ctx: click.Context, param: click.Parameter, value):
    """Click callback for an option or argument naming models (one, or a repeated option):
    a typo fails as the command line is read, with a suggestion, before anything is opened."""
    from dreamsearch.models.registry import get_spec

    for name in [value] if isinstance(value, str) else value:
        get_spec(name)
    return value


def model_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    """Click callback for a comma-separated ``--models``: the checked names, without repeats
    (none when the option is not given)."""
    if value is None:
        return []
    return model_names(ctx, param, list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip())))


@contextmanager
def progress_display(quiet: bool):
    """Yield the indexer's progress callback: a rich bar on stderr of the images embedded
    out of those to embed (files already indexed, copies and moves are no work), "counting…"
    while the scan still finds files, the model's rate and the time left (only on a
    terminal: logs stay clean), and the note that Ctrl-C was heard, at once, unless
    ``quiet``."""
    from rich.console import Console

    console = Console(stderr=True)
    heard = False

    def note_stop(report) -> None:
        nonlocal heard
        if report.stopping and not heard and not quiet:
            heard = True
            console.print("stopping: saving what the model has embedded (Ctrl-C again to stop at once)")

    if quiet or not console.is_terminal:
        yield note_stop
        return
    import time
    from collections import deque
    from datetime import timedelta

    from rich.progress import BarColumn, Progress, TextColumn

    columns = (
        TextColumn("embedded"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[pace]}"),
        TextColumn("{task.description}"),
    )
    # The rate is the embedded count's over the last 5 minutes, from the first commit on:
    # the model's pace, not the scan's or the disk's. (rich's own speed restarts whenever
    # the total changes, which it does until the scan ends: the ETA was almost always
    # -:--:--.)
    commits: deque[tuple[float, int]] = deque()
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("", total=None, counts="scanning…", pace="")

        def update(report) -> None:
            note_stop(report)
            now = time.monotonic()
            if report.embedded and (not commits or commits[-1][1] != report.embedded):
                commits.append((now, report.embedded))
            while len(commits) > 2 and now - commits[0][0] > 300:
                commits.popleft()
            (first, done_then), (last, done) = (commits[0], commits[-1]) if commits else ((0.0, 0), (0.0, 0))
            per_s = (done - done_then) / (last - first) if last > first else 0.0
            counting = report.scanning > 0  # the total still grows: the time left is a lower bound
            left = str(timedelta(seconds=round((report.to_embed - report.embedded) / per_s))) if per_s else "-:--:--"
            bar.update(
                task,
                total=report.to_embed or None,
                completed=report.embedded,
                counts=f"{report.embedded}/{report.to_embed}{' counting…' if counting else ''}",
                pace=f"{per_s:.2f} img/s, {'at least ' if counting and per_s else ''}{left} left",
                description=f"copies {report.copied + report.moved} · failed {report.failed}",
            )

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
