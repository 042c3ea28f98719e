"""``dreamsearch embed``: vectors of image files, written to a file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dreamsearch.cli.common import DEVICE_CHOICES, model_names, precision_option, weights_dir_option
from dreamsearch.display import problem_line
from dreamsearch.errors import DreamsearchError
from dreamsearch.models.registry import DEFAULT_MODEL


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-m",
    "--model",
    "model_name",
    default=DEFAULT_MODEL,
    show_default=True,
    callback=model_names,
    help="Model name (see `models list`).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Where to write: .npy float32 [N, dim] in input order, or JSON ('-' for stdout).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npy", "json"]),
    default=None,
    help="Output format (default: from the file name, npy unless it ends in .json).",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch (default: all cores).")
@click.option(
    "--compile/--no-compile",
    "compile_model",
    default=False,
    show_default=True,
    help="torch.compile the model: 15-60 s once, then 10-35% faster on CPU; for many images.",
)
@precision_option("fp32")
@click.option(
    "--no-draft",
    is_flag=True,
    help="Decode JPEG and WebP at full size: the official preprocessing exactly (slower; "
    "the default reduced-scale decode changes pixels by under 1/255 on average).",
)
@weights_dir_option
def embed(
    images, model_name, output, fmt, batch_size, device, threads, compile_model, precision, no_draft, weights_dir
) -> None:
    """Embed IMAGES with one model and save the vectors (unit norm, one row per image in
    input order).

    Each image is decoded as `index` and `query` decode it (large JPEGs and WebPs at a
    reduced scale unless --no-draft), EXIF orientation applied and alpha composited on
    white. Files that cannot be read are reported one line each and get a row of NaN
    (JSON: a null vector); the others are still embedded and the command then exits with
    status 1.
    """
    from dreamsearch.api import Library
    from dreamsearch.output import write_embeddings

    fmt = fmt or ("json" if str(output).endswith(".json") or str(output) == "-" else "npy")
    if fmt == "npy" and str(output) == "-":
        raise DreamsearchError("npy output needs a file name; use --format json for stdout")
    with Library.open(
        weights_dir=weights_dir, device=device, precision=precision, compile=compile_model, threads=threads
    ) as library:
        result = library.embed_files(images, model_name, batch_size=batch_size, draft=not no_draft)
    for failure in result.failures:
        click.echo(f"skipped {problem_line(failure.path, failure.reason)}", err=True)
    if len(result.failures) == len(result.paths):
        raise DreamsearchError("none of the images could be read; nothing written")
    write_embeddings(result, output, fmt)
    if str(output) != "-":
        skipped = f" ({len(result.failures)} rows of NaN: the files skipped)" if result.failures else ""
        click.echo(f"wrote {len(result.paths)} x {result.vectors.shape[1]} embeddings to {output}{skipped}", err=True)
    if result.failures:
        sys.exit(1)
