"""The ``dreamsearch`` command. Thin: parse options, call the library, render.

Heavy modules (torch, open_clip) are imported inside the commands that embed, so
``dreamsearch --help`` and ``dreamsearch models list`` answer at once.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from dreamsearch import __version__
from dreamsearch.errors import DreamsearchError
from dreamsearch.paths import display_path, human_bytes, printable, problem_line

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


class _Group(click.Group):
    """Turns expected failures into one line on stderr and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DreamsearchError as exc:
            click.echo(f"error: {printable(str(exc))}", err=True)
            ctx.exit(1)
        except OSError as exc:  # a full disk, a file that went away: say which, in one line
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {printable(where + (exc.strerror or str(exc)))}", err=True)
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dreamsearch")
def main() -> None:
    """Find the images in your folders that look most like a given one (DreamSim)."""


@main.group(cls=_Group)
def models() -> None:
    """List, download and import model weights."""


@models.command("list")
@weights_dir_option
def models_list(weights_dir: Path | None) -> None:
    """Show every model: output size, parts, and whether its weights are installed."""
    from rich.console import Console
    from rich.table import Table

    from dreamsearch.models.registry import MODELS
    from dreamsearch.models.weights import installed_size, missing_files
    from dreamsearch.models.weights import weights_dir as resolve

    root = resolve(weights_dir)
    table = Table(title=f"models (weights in {root})")
    for column in ("name", "dim", "branches", "installed", "size on disk"):
        table.add_column(column, justify="right" if column in ("dim", "size on disk") else "left")
    for spec in MODELS.values():
        missing = missing_files(spec, root)
        state = "yes" if not missing else f"no ({len(missing)} of {len(spec.files)} files missing)"
        size = installed_size(spec, root)
        table.add_row(spec.name, str(spec.dim), ", ".join(spec.branches), state, human_bytes(size) if size else "-")
    Console().print(table)


@models.command("fetch")
@click.argument("name")
@weights_dir_option
def models_fetch(name: str, weights_dir: Path | None) -> None:
    """Download the weights of NAME (with checks) into the weights folder."""
    from dreamsearch.models.registry import get_spec
    from dreamsearch.models.weights import ensure_weights, missing_files
    from dreamsearch.models.weights import weights_dir as resolve

    spec, root = get_spec(name), resolve(weights_dir)
    if not missing_files(spec, root):
        click.echo(f"{name}: already installed in {root}")
        return
    ensure_weights(spec, root, allow_download=True)
    click.echo(f"{name}: installed in {root}")


@models.command("import")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@weights_dir_option
def models_import(name: str, path: Path, weights_dir: Path | None) -> None:
    """Install NAME's weights from PATH: a release zip, a checkpoint file, or a folder
    (an official DreamSim cache_dir included), for machines without internet."""
    from dreamsearch.models.registry import get_spec
    from dreamsearch.models.weights import import_weights, missing_files
    from dreamsearch.models.weights import weights_dir as resolve

    spec, root = get_spec(name), resolve(weights_dir)
    written = import_weights(spec, root, path)
    for file in written:
        click.echo(f"imported {file}")
    still = missing_files(spec, root)
    if still:
        raise DreamsearchError(
            f"{name} still needs: " + ", ".join(f.path for f in still) + " (import them too)"
        )
    click.echo(f"{name}: installed in {root}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-m", "--model", "model_name", default="dreamsim", show_default=True, help="Model name (see `models list`).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Where to write: .npy float32 [N, dim] in input order, or JSON ('-' for stdout).")
@click.option("--format", "fmt", type=click.Choice(["npy", "json"]), default=None,
              help="Output format (default: from the file name, npy unless it ends in .json).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch (default: all cores).")
@click.option("--compile/--no-compile", "compile_model", default=False, show_default=True,
              help="torch.compile the model: 15-60 s once, then 10-35% faster on CPU; for many images.")
@weights_dir_option
def embed(images, model_name, output, fmt, batch_size, device, threads, compile_model, weights_dir) -> None:
    """Embed IMAGES with one model and save the vectors (unit norm, input order).

    Each image is decoded fully (no JPEG draft), EXIF orientation applied and alpha
    composited on white. Files that cannot be read are reported one line each; the
    others are still embedded and the command then exits with status 1.
    """
    from dreamsearch.embedding import embed_files, write_embeddings
    from dreamsearch.models import load_model
    from dreamsearch.models.base import set_threads

    fmt = fmt or ("json" if str(output).endswith(".json") or str(output) == "-" else "npy")
    if fmt == "npy" and str(output) == "-":
        raise DreamsearchError("npy output needs a file name; use --format json for stdout")
    set_threads(threads)
    embedder = load_model(model_name, weights_dir=weights_dir, device=device, compile=compile_model)
    result = embed_files(embedder, list(images), batch_size=batch_size)
    for failure in result.failures:
        click.echo(f"skipped {problem_line(failure.path, failure.reason)}", err=True)
    if not result.paths:
        raise DreamsearchError("none of the images could be read; nothing written")
    write_embeddings(result, output, fmt, embedder.name)
    if str(output) != "-":
        click.echo(f"wrote {len(result.paths)} x {embedder.dim} embeddings to {output}", err=True)
    if result.failures:
        sys.exit(1)


def library_option(func):
    return click.option(
        "--library", "library_path", type=click.Path(file_okay=False, path_type=Path), envvar="DREAMSEARCH_LIBRARY",
        help="Library folder. Default: $DREAMSEARCH_LIBRARY or the user data folder.",
    )(func)


@main.command("index")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-m", "--model", "model_names", multiple=True, default=("dreamsim",), show_default=True,
              help="Model to embed with; repeat for several (each image is decoded once).")
@library_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Threads that read and decode files (default: cores - 1; 0 does it in the main thread).")
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths or names matching GLOB (repeatable).")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links (loops are detected).")
@click.option("--no-draft", is_flag=True, help="Decode JPEGs at full size (slower; draft changes pixels by <1/255 on average).")
@click.option("--max-pixels", default=200_000_000, show_default=True, type=click.IntRange(1),
              help="Refuse larger images as decompression bombs.")
@click.option("--max-file-size", default="2GiB", show_default=True, type=ByteSize(),
              help="Record larger files as failed without reading them (e.g. 500MB, 4GiB).")
@click.option("--gpu-decode/--no-gpu-decode", default=None,
              help="Decode baseline JPEGs in batches on the GPU (default: when the model runs on CUDA).")
@click.option("--compile/--no-compile", "compile_model", default=False, help="torch.compile the model (for long runs).")
@click.option("--dry-run", is_flag=True, help="Only scan and report what would change.")
@click.option("--prune", is_flag=True,
              help="Forget files gone from disk even when a folder lost all or most of them "
                   "(without it they are kept: an unmounted drive looks the same).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display or per-file messages (for cron).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@weights_dir_option
def index_command(folders, model_names, library_path, batch_size, workers, device, threads, exclude, follow_symlinks,
                  no_draft, max_pixels, max_file_size, gpu_decode, compile_model, dry_run, prune, quiet, as_json,
                  weights_dir) -> None:
    """Add FOLDERS to the library: embed new and changed images, reuse vectors of copies
    and moves, forget deleted files. Hidden files and folders and junk folders (@eaDir,
    node_modules, $RECYCLE.BIN, ...) are skipped. Interrupt with Ctrl-C at any time: work
    done so far is kept and the next run resumes."""
    import json

    from dreamsearch.indexer import IndexOptions, index_folders
    from dreamsearch.library import LibraryFolder, library_dir

    library = LibraryFolder.prepare(library_dir(library_path))
    models = []
    if not dry_run:
        from dreamsearch.models import PendingModel

        if threads:
            from dreamsearch.models.base import set_threads

            set_threads(threads)
        models = [PendingModel(n, weights_dir=weights_dir, device=device, compile=compile_model) for n in model_names]
    options = IndexOptions(batch_size=batch_size, exclude=tuple(exclude), follow_symlinks=follow_symlinks,
                           draft=not no_draft, max_pixels=max_pixels, max_file_size=max_file_size, dry_run=dry_run,
                           prune=prune, gpu_decode={None: "auto", True: "cuda", False: None}[gpu_decode],
                           **({} if workers is None else {"workers": workers}))
    with _progress_display(quiet) as progress:
        report = index_folders(library, list(folders), models, options, progress)
    if not quiet:
        for path, reason in report.failures:
            click.echo(f"skipped {problem_line(path, reason)}", err=True)
        for root in report.missing_roots:
            click.echo(f"note: indexed folder {display_path(root)} is missing (unplugged? `dreamsearch forget` removes it)",
                       err=True)
    for folder, gone, indexed in report.kept_folders:  # shown even with --quiet: it needs a decision
        click.echo(
            f"warning: {display_path(folder)}: {gone} of its {indexed} indexed files are gone from disk, so they were "
            f"kept (an unmounted drive?); if they were really deleted, run `dreamsearch index --prune "
            f"{display_path(folder)}`", err=True)
    if as_json:
        click.echo(json.dumps(report.summary()))
    elif not quiet:
        summary = report.summary()
        click.echo(", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("interrupted",)))
    if report.interrupted:
        click.echo("interrupted: the work done so far is saved; run the same command to resume", err=True)
        sys.exit(130)


@contextmanager
def _progress_display(quiet: bool):
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


@main.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path, allow_dash=True))
@click.option("-k", "k", default=25, show_default=True, type=int, help="How many results per query.")
@click.option("-m", "--model", "model_name", default="dreamsim", show_default=True)
@click.option("--like", "like", multiple=True, type=click.Path(path_type=Path),
              help="Query with the stored vector of an indexed file (no model is loaded).")
@click.option("--include-self", is_flag=True, help="Keep the query's own content in its results.")
@click.option("--max-distance", type=float, default=None, help="Only results at most this far (0..2).")
@click.option("--under", type=click.Path(path_type=Path), default=None, help="Only results inside this folder.")
@click.option("--combine", type=click.Choice(["none", "mean"]), default="none", show_default=True,
              help="mean: one query from the mean of all query images.")
@click.option("--json", "fmt", flag_value="json", help="One JSON document.")
@click.option("--jsonl", "fmt", flag_value="jsonl", help="One JSON object per result.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV: query,rank,distance,path,size.")
@click.option("-0", "fmt", flag_value="null", help="Result paths separated by NUL (for xargs -0).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a contact sheet of the results (PNG).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML page of the results.")
@click.option("--nprobe", default=16, show_default=True, type=click.IntRange(1), help="IVF lists to search.")
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@library_option
@weights_dir_option
def query(images, k, model_name, like, include_self, max_distance, under, combine, fmt, grid, html_out, nprobe,
          device, library_path, weights_dir) -> None:
    """Find the images in the library most similar to IMAGES (files, or '-' to read paths
    from stdin). Distances are DreamSim distances (1 - cosine), exact."""
    from dreamsearch.library import LibraryFolder, library_dir
    from dreamsearch.output import render
    from dreamsearch.search import Searcher

    if k <= 0:
        raise DreamsearchError("-k must be at least 1")
    files = [Path(line) for arg in images for line in (_stdin_paths() if str(arg) == "-" else [arg])]
    if not files and not like:
        raise DreamsearchError("give at least one query image (a file, '-' for stdin, or --like PATH)")
    for path in files:
        if not path.is_file():
            raise DreamsearchError(f"{path}: no such file")
    import numpy as np

    with Searcher(LibraryFolder(library_dir(library_path)), model_name, nprobe=nprobe) as searcher:
        queries = []  # (query files, vector, ids of the query's own contents)
        for path in like:
            vector, own = searcher.stored_vector(path)
            queries.append(([str(path)], vector, [own]))
        if files:
            from dreamsearch.models import load_model

            embedder = load_model(model_name, weights_dir=weights_dir, device=device)
            for path in files:
                vector, own = searcher.embed_file(embedder, path)
                queries.append(([str(path)], vector, [] if own is None else [own]))
        if combine == "mean":
            mean = np.mean([vector for _sources, vector, _own in queries], axis=0)
            queries = [([s for q in queries for s in q[0]], mean / np.linalg.norm(mean), [i for q in queries for i in q[2]])]
        results = [
            (sources, searcher.search(vector, k, [] if include_self else own, max_distance, under))
            for sources, vector, own in queries
        ]
    render([(" + ".join(sources), matches) for sources, matches in results], fmt, model_name)
    if grid or html_out:
        from dreamsearch.contact_sheet import result_row

        _write_sheets([result_row(" + ".join(s), s, m, model_name) for s, m in results], grid, html_out,
                      f"dreamsearch query ({model_name})")


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-k", "k", default=25, show_default=True, type=click.IntRange(1), help="How many results per model.")
@click.option("--models", "model_list", default="dreamsim,clip,resnet50", show_default=True,
              help="Comma-separated models to compare (each must be indexed).")
@click.option("--include-self", is_flag=True, help="Keep the query's own content in the results.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (results and agreement).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the results, one row per model (PNG).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML page, one section per model.")
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@library_option
@weights_dir_option
def compare(image, k, model_list, include_self, as_json, grid, html_out, device, library_path, weights_dir) -> None:
    """Query IMAGE through several models side by side, with how much their top-k agree
    (Jaccard overlap and Spearman rank correlation)."""
    from dreamsearch.compare import compare_models, overlaps
    from dreamsearch.library import LibraryFolder, library_dir
    from dreamsearch.output import render_comparison

    names = list(dict.fromkeys(name.strip() for name in model_list.split(",") if name.strip()))
    if len(names) < 2:
        raise DreamsearchError("--models needs at least two model names, separated by commas")
    library = LibraryFolder(library_dir(library_path))  # each Searcher checks that it exists
    results = compare_models(library, image, k, names, weights_dir, device, include_self)
    render_comparison(str(image), k, results, overlaps(results, k), as_json)
    if grid or html_out:
        from dreamsearch.contact_sheet import result_row

        rows = [result_row(str(image), [str(image)], matches, name) for name, matches in results.items()]
        _write_sheets(rows, grid, html_out, f"dreamsearch compare: {image}")


@main.command()
@click.option("-m", "--model", "model_name", default="dreamsim", show_default=True)
@click.option("--max-distance", type=click.FloatRange(0, 2), default=None,
              help="Join images at most this far apart (default: the model's, see docs/duplicates.md).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML page of the groups.")
@library_option
def duplicates(model_name, max_distance, as_json, html_out, library_path) -> None:
    """Groups of identical and near-identical images in the whole library, each with a
    suggested keeper (most pixels, then oldest)."""
    from dreamsearch.api import Library
    from dreamsearch.output import render_duplicates

    with Library.open(library_path) as library:
        max_distance = library.default_duplicate_distance(model_name) if max_distance is None else max_distance
        groups = library.duplicates(model_name, max_distance)
    render_duplicates(groups, model_name, max_distance, as_json)
    if html_out:
        from dreamsearch.contact_sheet import duplicate_rows

        _write_sheets(duplicate_rows(groups), None, html_out, f"dreamsearch duplicates ({model_name})")


def _write_sheets(rows, grid: Path | None, html_out: Path | None, title: str) -> None:
    """Write the contact sheet and/or HTML page, and say where (on stderr: stdout may be JSON)."""
    from dreamsearch.contact_sheet import write_html, write_png

    if grid:
        write_png(rows, grid)
        click.echo(f"wrote {printable(str(grid))}", err=True)
    if html_out:
        write_html(rows, html_out, title)
        click.echo(f"wrote {printable(str(html_out))}", err=True)


def _stdin_paths() -> list[str]:
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


@main.command()
@library_option
@click.option("--failed", "show_failed", is_flag=True, help="List files that could not be read, with reasons.")
def status(library_path, show_failed) -> None:
    """Show the library: folders, files, vectors per model, index type, size on disk."""
    from dreamsearch.library import library_dir
    from dreamsearch.status import library_status

    lines = library_status(library_dir(library_path), show_failed)
    click.echo(printable("\n".join(lines)))


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@library_option
def forget(folder, library_path) -> None:
    """Remove FOLDER (an indexed root) and its files from the library."""
    from dreamsearch.catalog import Catalog
    from dreamsearch.library import LibraryFolder, library_dir

    library = LibraryFolder.prepare(library_dir(library_path))
    wanted = Path(folder).expanduser().resolve()
    with library.writer_lock(), Catalog(library.catalog_path) as catalog:
        place = catalog.find_root(wanted)
        if place is None:
            raise DreamsearchError(f"{wanted} is not an indexed folder (see `dreamsearch status`)")
        if place.prefix:
            raise DreamsearchError(f"{wanted} is part of the indexed folder {place.path}; forget that folder, "
                                   f"or index it with `--exclude '{place.prefix}*'`")
        removed = catalog.forget_root(place.id)
        from dreamsearch.vector_index import save_indexes

        save_indexes(catalog, library.index_dir)
    click.echo(f"forgot {display_path(wanted)} ({removed} files)")


def _add_eval_commands() -> None:
    from dreamsearch.cli_eval import eval_group  # defined there to keep this module short

    main.add_command(eval_group)


_add_eval_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
