"""``dreamsearch models``: list, download and import weights."""

from __future__ import annotations

from pathlib import Path

import click

from dreamsearch.cli.common import CommandGroup, weights_dir_option
from dreamsearch.errors import DreamsearchError
from dreamsearch.paths import human_bytes


@click.group(cls=CommandGroup)
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
