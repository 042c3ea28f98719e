"""``dreamsearch models``: list, download and import weights."""

from __future__ import annotations

from pathlib import Path

import click

from dreamsearch.cli.common import CommandGroup, model_names, weights_dir_option
from dreamsearch.errors import DreamsearchError
from dreamsearch.display import human_bytes


@click.group(cls=CommandGroup)
def models() -> None:
    """List, download and import model weights."""


@models.command("list")
@weights_dir_option
def models_list(weights_dir: Path | None) -> None:
    """Show every model: output size, parts, and whether its weights are installed."""
    from rich.console import Console

    from dreamsearch.models.registry import MODELS
    from dreamsearch.models.weights import installed_size, missing_files, unverified_files
    from dreamsearch.models.weights import weights_dir as resolve
    from dreamsearch.output import new_table

    root = resolve(weights_dir)
    own = unverified_files(root)
    table = new_table(f"models (weights in {root})", ("name", "dim", "branches", "installed", "size on disk"),
                      right=("dim", "size on disk"))
    for spec in MODELS.values():
        missing = missing_files(spec, root)
        published = not any(f.path in own for f in spec.files)
        state = (f"no ({len(missing)} of {len(spec.files)} files missing)" if missing
                 else "yes" if published else "yes (not published)")
        size = installed_size(spec, root)
        table.add_row(spec.name, str(spec.dim), ", ".join(spec.branches), state, human_bytes(size) if size else "-")
    Console().print(table)


@models.command("fetch")
@click.argument("name", callback=model_names)
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
@click.argument("name", callback=model_names)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--no-verify", is_flag=True,
              help="Take weights that are not the published ones (your own, fine-tuned): no published checksum "
                   "is checked, and their vectors are kept apart from those of the published weights.")
@weights_dir_option
def models_import(name: str, path: Path, no_verify: bool, weights_dir: Path | None) -> None:
    """Install NAME's weights from PATH: a release zip, a checkpoint file, or a folder
    (an official DreamSim cache_dir included), for machines without internet."""
    from dreamsearch.models.registry import get_spec
    from dreamsearch.models.weights import import_weights, missing_files
    from dreamsearch.models.weights import weights_dir as resolve

    spec, root = get_spec(name), resolve(weights_dir)
    written = import_weights(spec, root, path, verify=not no_verify)
    for file in written:
        click.echo(f"imported {file}")
    if written and no_verify:
        click.echo(f"warning: {path} are not the published weights of '{name}'; their vectors are kept apart "
                   "from the published ones", err=True)
    still = missing_files(spec, root)
    if still:
        raise DreamsearchError(
            f"{name} still needs: " + ", ".join(f.path for f in still) + " (import them too)"
        )
    click.echo(f"{name}: installed in {root}")
