"""``dreamsearch models``: list, download and import weights."""

from __future__ import annotations

from pathlib import Path

import click

from dreamsearch.cli.common import CommandGroup, model_names, precision_option, weights_dir_option
from dreamsearch.display import human_bytes
from dreamsearch.errors import DreamsearchError


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
    table = new_table(
        f"models (weights in {root})",
        ("name", "dim", "branches", "installed", "size on disk"),
        right=("dim", "size on disk"),
    )
    for spec in MODELS.values():
        missing = missing_files(spec, root)
        published = not any(f.path in own for f in spec.files)
        state = (
            f"no ({len(missing)} of {len(spec.files)} files missing)"
            if missing
            else "yes"
            if published
            else "yes (not published)"
        )
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
@click.option(
    "--no-verify",
    is_flag=True,
    help="Take weights that are not the published ones (your own, fine-tuned): no published checksum "
    "is checked, and their vectors are kept apart from those of the published weights.",
)
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
        click.echo(
            f"warning: {path} are not the published weights of '{name}'; their vectors are kept apart "
            "from the published ones",
            err=True,
        )
    still = missing_files(spec, root)
    if still:
        raise DreamsearchError(f"{name} still needs: " + ", ".join(f.path for f in still) + " (import them too)")
    click.echo(f"{name}: installed in {root}")


@models.command("check")
@click.argument("name", callback=model_names)
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@precision_option("fp32")
@click.option(
    "--limit",
    type=click.IntRange(40),
    default=200,
    show_default=True,
    help="Pictures to compare on at most (the first ones found, in name order).",
)
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all cores).")
@weights_dir_option
def models_check(
    name: str, folder: Path, precision: str, limit: int, threads: int | None, weights_dir: Path | None
) -> None:
    """Compare how this install computes NAME's vectors (OpenVINO where installed;
    --precision int8) with float32 torch, on your photos in FOLDER and your weights: cosine,
    distances, duplicate decisions, top 10 and batch invariance, each against its gate.
    Exits 1 when a gate fails (then keep --precision fp32)."""
    from dreamsearch.models import PendingModel

    pending = PendingModel(
        name, weights_dir=weights_dir, device="cpu", allow_download=False, precision=precision, threads=threads
    )
    pixels = _pictures(folder, pending.preprocess_spec, limit)
    from dreamsearch.models.agreement import GATES, MIN_PICTURES, in_batches, measure

    if len(pixels) < MIN_PICTURES:
        raise DreamsearchError(f"{folder}: {len(pixels)} readable pictures; the check needs at least {MIN_PICTURES}")
    candidate = pending.load()
    expected = in_batches(pending.torch_reference().embed, pixels)
    agreement = measure(expected, candidate.embed, pixels, pending.spec.duplicate_distance)
    _print_agreement(
        f"{name} on {candidate.backend} against float32 torch, {agreement.pictures} pictures from {folder}",
        agreement,
        GATES,
    )
    failures = agreement.failures()
    if failures:
        raise DreamsearchError(
            f"{name} on {candidate.backend} fails {len(failures)} of {len(GATES)} gates on these "
            f"pictures: keep --precision fp32"
        )
    click.echo(f"{name} on {candidate.backend}: every gate holds on these pictures")


def _pictures(folder: Path, recipe, limit: int):
    """The model inputs of the first ``limit`` readable pictures under ``folder`` (an
    unreadable one is named and skipped)."""
    import numpy as np

    from dreamsearch.display import problem_line
    from dreamsearch.errors import ImageError
    from dreamsearch.images import open_rgb
    from dreamsearch.scan import scan

    pixels: list[np.ndarray] = []
    for path in sorted(folder / found.relpath for found in scan(folder)):
        if len(pixels) == limit:
            break
        try:
            pixels.append(recipe(open_rgb(path)))
        except ImageError as exc:
            click.echo(f"skipped {problem_line(path, exc.reason)}", err=True)
    return np.stack(pixels) if pixels else np.zeros((0,), np.uint8)


def _print_agreement(title: str, agreement, gates) -> None:
    from rich.console import Console

    from dreamsearch.output import new_table

    table = new_table(title, ("measure", "value", "gate", "holds"), right=("value",))
    for key, gate in gates.items():
        value = getattr(agreement, key)
        table.add_row(gate.label, f"{value:.8g}", gate.describe(), "yes" if gate.holds(value) else "NO")
    table.add_row("pairs near the duplicate distance (either decision holds)", str(agreement.borderline_pairs), "", "")
    Console().print(table)
