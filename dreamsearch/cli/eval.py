"""``dreamsearch eval``: NIGHTS 2AFC, retrieval quality and copy detection, per model."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import click

from dreamsearch.cli.common import (
    DEVICE_CHOICES,
    CommandGroup,
    library_option,
    model_names,
    progress_display,
    weights_dir_option,
)
from dreamsearch.defaults import PIXEL_METRICS
from dreamsearch.display import printable
from dreamsearch.models.registry import DEFAULT_MODEL

MAX_REPORTED = 20


@click.group("eval", cls=CommandGroup)
def eval_group() -> None:
    """Measure models: NIGHTS 2AFC accuracy, retrieval on labelled folders, copy detection."""


def model_options(default: tuple[str, ...], check=model_names):
    def decorate(func):
        for option in reversed(
            [
                click.option(
                    "-m",
                    "--model",
                    "model_names",
                    multiple=True,
                    default=default,
                    show_default=True,
                    callback=check,
                    help="Model to evaluate (repeatable).",
                ),
                click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1)),
                click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES),
                click.option("--json", "as_json", is_flag=True, help="One JSON document."),
                library_option,
                weights_dir_option,
            ]
        ):
            func = option(func)
        return func

    return decorate


def _models_or_pixel_metrics(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> tuple[str, ...]:
    """``nights`` also takes the pixel metrics; every other name is checked as a model at once."""
    model_names(ctx, param, [name for name in names if name not in PIXEL_METRICS])
    return names


class _Problems:
    """One line per problem on stderr, the first ``MAX_REPORTED`` of them, then a count."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, line: str) -> None:
        self.count += 1
        if self.count <= MAX_REPORTED:
            click.echo(printable(f"skipped {line}"), err=True)

    def close(self) -> None:
        if self.count > MAX_REPORTED:
            click.echo(f"... and {self.count - MAX_REPORTED} more problems", err=True)


@contextmanager
def _evaluation(library_path, weights_dir, device):
    """The measurements over the library's evaluation library (``Library.evaluation``)."""
    from dreamsearch.api import Library

    with Library.open(library_path, weights_dir=weights_dir, device=device) as library, library.evaluation() as made:
        yield made


@eval_group.command("nights")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True)
@model_options((DEFAULT_MODEL,), check=_models_or_pixel_metrics)
def nights(folder, split, model_names, batch_size, device, as_json, library_path, weights_dir) -> None:
    """NIGHTS 2AFC accuracy of each model (or of the pixel baselines `-m psnr`, `-m ssim`)
    on FOLDER, the official NIGHTS folder (data.csv, ref/, distort/). The split's images
    are embedded once and kept for later runs."""
    problems = _Problems()
    results, skipped = {}, {}
    with _evaluation(library_path, weights_dir, device) as evaluation:
        rows = evaluation.nights_rows(folder, split)
        for line in rows.malformed:
            problems(line)
        for name in model_names:
            with progress_display(as_json or name in PIXEL_METRICS) as progress:  # a pixel metric embeds nothing
                results[name], skipped[name] = evaluation.nights(
                    folder, rows, split, name, batch_size=batch_size, progress=progress, problem=problems
                )
    problems.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "split": split,
                    "triplets": len(rows.triplets),
                    "too_few_votes": rows.too_few_votes,
                    "malformed_rows": len(rows.malformed),
                    "models": {
                        name: {
                            "skipped_triplets": skipped[name],
                            "splits": {
                                s: {
                                    "accuracy": _finite(a.accuracy),
                                    "ci95": [_finite(a.low), _finite(a.high)],
                                    "triplets": a.triplets,
                                }
                                for s, a in by_split.items()
                            },
                        }
                        for name, by_split in results.items()
                    },
                }
            )
        )
        return
    from rich.console import Console

    from dreamsearch.output import new_table

    columns = list(next(iter(results.values())))
    table = new_table(
        f"NIGHTS 2AFC accuracy ({split}; 95% bootstrap interval; triplets)",
        ["model", *columns, "skipped"],
        right=[*columns, "skipped"],
    )
    for name, by_split in results.items():
        cells = [
            f"{100 * a.accuracy:.1f}% [{100 * a.low:.1f}–{100 * a.high:.1f}] n={a.triplets}" if a.triplets else "-"
            for a in by_split.values()
        ]
        table.add_row(name, *cells, str(skipped[name]))
    Console().print(table)
    click.echo(
        f"{len(rows.triplets)} triplets; {rows.too_few_votes} rows with fewer than 6 votes left out; "
        f"{len(rows.malformed)} malformed rows"
    )


@eval_group.command("retrieval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1))
@click.option(
    "--groups",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV with columns path,group (default: the first sub-folder is the label).",
)
@model_options((DEFAULT_MODEL, "clip", "resnet50"))
def retrieval(folder, k, groups, model_names, batch_size, device, as_json, library_path, weights_dir) -> None:
    """Retrieval quality on FOLDER (one sub-folder per class): every image queries the
    rest; recall@1, recall@k, mAP@k and search latency per model."""
    problems = _Problems()
    scores = {}
    with _evaluation(library_path, weights_dir, device) as evaluation:
        for name in model_names:
            with progress_display(as_json) as progress:
                scores[name] = evaluation.retrieval(
                    folder, name, k, groups, batch_size=batch_size, progress=progress, problem=problems
                )
    problems.close()
    if as_json:
        click.echo(json.dumps({"k": k, "models": {name: vars(s) for name, s in scores.items()}}))
        return
    _table(
        f"retrieval on {folder} (every labelled image queries the rest)",
        ["model", "queries", "recall@1", f"recall@{k}", f"mAP@{k}", "search p50", "search p95"],
        [
            [
                name,
                str(s.queries),
                f"{s.recall_at_1:.3f}",
                f"{s.recall_at_k:.3f}",
                f"{s.map_at_k:.3f}",
                f"{s.search_ms_p50:.2f} ms",
                f"{s.search_ms_p95:.2f} ms",
            ]
            for name, s in scores.items()
        ],
    )


@eval_group.command("copies")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1))
@model_options((DEFAULT_MODEL,))
def copies(folder, k, model_names, batch_size, device, as_json, library_path, weights_dir) -> None:
    """Near-duplicate robustness: make edited copies of FOLDER's images (JPEG, resize,
    crop, colour, rotation, flip, text), index them with the originals, and report per
    edit how often a copy finds its family, and at what distances."""
    problems = _Problems()
    table = {}
    with _evaluation(library_path, weights_dir, device) as evaluation:
        made = evaluation.make_copies(folder, problems)
        if not as_json:  # the progress total counts both folders: say what it is made of
            edited = made.originals * made.edits
            click.echo(
                f"{made.originals} originals + {edited} edited copies ({made.edits} edits each) = "
                f"{made.originals + edited} images per model, each embedded once and kept for later runs",
                err=True,
            )
        for name in model_names:
            with progress_display(as_json) as progress:
                table[name] = evaluation.copies(
                    folder, made, name, k, batch_size=batch_size, progress=progress, problem=problems
                )
    problems.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "k": k,
                    "copies_folder": str(made.folder),
                    "models": {
                        name: [{key: _finite(value) for key, value in vars(s).items()} for s in rows]
                        for name, rows in table.items()
                    },
                }
            )
        )
        return
    _table(
        f"copy detection on {folder} (copies in {made.folder})",
        ["model", "edit", "copies", "found@1", f"original@{k}", "dist p50", "dist p95", "nearest other p5"],
        [
            [
                name,
                s.transform,
                str(s.copies),
                f"{s.found_at_1:.3f}",
                f"{s.original_at_k:.3f}",
                f"{s.distance_p50:.4f}",
                f"{s.distance_p95:.4f}",
                f"{s.nearest_other_p5:.4f}",
            ]
            for name, rows in table.items()
            for s in rows
        ],
    )


def _finite(value):
    """JSON has no NaN: an undefined figure (no triplets, no other image) is null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console

    from dreamsearch.output import new_table

    table = new_table(printable(title), columns, right=columns[2:])
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)
