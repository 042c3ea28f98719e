"""The ``dreamsearch`` command. Thin: parse options, call the library, render.

Heavy modules (torch, open_clip) are imported inside the commands that embed, so
``dreamsearch --help`` and ``dreamsearch models list`` answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dreamsearch import __version__
from dreamsearch.errors import DreamsearchError

DEVICE_CHOICES = click.Choice(["auto", "cpu", "cuda"])


class _Group(click.Group):
    """Turns expected failures into one line on stderr and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DreamsearchError as exc:
            click.echo(f"error: {exc}", err=True)
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
        table.add_row(spec.name, str(spec.dim), ", ".join(spec.branches), state, _human_bytes(size) if size else "-")
    Console().print(table)


def _human_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


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
        click.echo(f"skipped {failure}", err=True)
    if not result.paths:
        raise DreamsearchError("none of the images could be read; nothing written")
    write_embeddings(result, output, fmt, embedder.name)
    if str(output) != "-":
        click.echo(f"wrote {len(result.paths)} x {embedder.dim} embeddings to {output}", err=True)
    if result.failures:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
