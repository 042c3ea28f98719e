"""``dreamsearch index``: add folders to the library."""

from __future__ import annotations

import sys

import click

from dreamsearch.cli.common import (
    DEVICE_CHOICES,
    ByteSize,
    folders_argument,
    library_option,
    models_option,
    precision_option,
    progress_display,
    weights_dir_option,
)
from dreamsearch.defaults import DEFAULT_MAX_PIXELS
from dreamsearch.display import display_path, kept_folder_warning, problem_line


@click.command("index")
@folders_argument
@models_option("Model to embed with; repeat for several (each image is decoded once).")
@library_option
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Images per commit (default: about 5 s of work on a CPU, the first image alone; 32 on CUDA).",
)
@click.option(
    "--workers",
    type=click.IntRange(0),
    default=None,
    help="Threads that read and decode files (default: two per core, at most 8; 0 does it in the main thread).",
)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="CPU threads for the model (default: all cores; with --engine ray, each node uses its own).",
)
@precision_option(None)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths or names matching GLOB (repeatable).")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links (loops are detected).")
@click.option(
    "--no-draft", is_flag=True, help="Decode JPEGs at full size (slower; draft changes pixels by <1/255 on average)."
)
@click.option(
    "--max-pixels",
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    type=click.IntRange(1),
    help="Refuse larger images as decompression bombs.",
)
@click.option(
    "--max-file-size",
    default="2GiB",
    show_default=True,
    type=ByteSize(),
    help="Record larger files as failed without reading them (e.g. 500MB, 4GiB).",
)
@click.option(
    "--gpu-decode/--no-gpu-decode",
    default=None,
    help="Decode baseline JPEGs in batches on the GPU (default: when the model runs on CUDA).",
)
@click.option("--compile/--no-compile", "compile_model", default=False, help="torch.compile the model (for long runs).")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Read, decode and embed in this process, or on a Ray cluster (pip install 'dreamsearch[ray]'; "
    "this process still scans and commits).",
)
@click.option(
    "--ray-address",
    metavar="auto|HOST:PORT",
    default=None,
    help="The Ray cluster to use with --engine ray (default: $RAY_ADDRESS, else one started on this machine).",
)
@click.option("--dry-run", is_flag=True, help="Only scan and report what would change.")
@click.option(
    "--prune",
    is_flag=True,
    help="Forget files gone from disk even when a folder lost all or most of them "
    "(without it they are kept: an unmounted drive looks the same).",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Read every failed file again (by default only failures that can pass, such as a permission, "
    "are retried, up to 3 runs in a row).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress display or per-file messages (for cron).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@weights_dir_option
def index_command(
    folders,
    model_names,
    library_path,
    batch_size,
    workers,
    device,
    threads,
    precision,
    exclude,
    follow_symlinks,
    no_draft,
    max_pixels,
    max_file_size,
    gpu_decode,
    compile_model,
    engine,
    ray_address,
    dry_run,
    prune,
    retry_failed,
    quiet,
    as_json,
    weights_dir,
) -> None:
    """Add FOLDERS to the library: embed new and changed images, reuse vectors of copies
    and moves, forget deleted files. Hidden files and folders and junk folders (@eaDir,
    node_modules, $RECYCLE.BIN, ...) are skipped. Interrupt with Ctrl-C at any time: work
    done so far is kept and the next run resumes."""
    if ray_address is not None and engine != "ray":
        raise click.UsageError("--ray-address needs --engine ray")
    import json

    if not dry_run and engine == "local" and not compile_model:
        _load_ahead_for_a_new_library(library_path, model_names, weights_dir, device, precision, threads)
    from dreamsearch.api import IndexOptions, Library

    options = IndexOptions(
        batch_size=batch_size,
        exclude=tuple(exclude),
        follow_symlinks=follow_symlinks,
        draft=not no_draft,
        max_pixels=max_pixels,
        max_file_size=max_file_size,
        dry_run=dry_run,
        prune=prune,
        retry_failed=retry_failed,
        gpu_decode={None: "auto", True: "cuda", False: None}[gpu_decode],
        engine=engine,
        ray_address=ray_address,
        **({} if workers is None else {"workers": workers}),
    )
    with (
        Library.open(
            library_path,
            weights_dir=weights_dir,
            device=device,
            precision=precision,
            compile=compile_model,
            threads=threads,
        ) as library,
        progress_display(quiet) as progress,
    ):
        report = library.index(folders, model_names, options, progress=progress)
    if not quiet:
        for path, reason in report.failures:
            click.echo(f"skipped {problem_line(path, reason)}", err=True)
        for root in report.missing_roots:
            click.echo(
                f"note: indexed folder {display_path(root)} is missing (unplugged? `dreamsearch forget` removes it)",
                err=True,
            )
    for folder, gone, indexed in report.kept_folders:  # shown even with --quiet: it needs a decision
        click.echo(kept_folder_warning(folder, gone, indexed), err=True)
    if as_json:
        click.echo(json.dumps(report.summary()))
    elif not quiet:
        summary = report.summary()
        click.echo(", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("interrupted",)))
    if report.interrupted:
        click.echo("interrupted: the work done so far is saved; run the same command to resume", err=True)
        sys.exit(130)


def _load_ahead_for_a_new_library(library_path, model_names, weights_dir, device, precision, threads) -> None:
    """A library that does not exist yet embeds every file it finds: its models start
    compiling from their saved graphs while this process imports the catalog layer
    (~0.4 s, one core), not later beside the decoding that keeps both cores busy. An
    existing library may find nothing to embed, and then loads no model at all."""
    from dreamsearch.layout import LibraryLayout, library_dir
    from dreamsearch.models import load_ahead

    if LibraryLayout(library_dir(library_path)).catalog_path.exists():
        return
    for name in model_names:
        load_ahead(name, weights_dir=weights_dir, device=device, precision=precision, threads=threads)
