"""``dreamsearch eval``: NIGHTS 2AFC, retrieval quality and copy detection, per model."""

from __future__ import annotations

import json
import math
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
from dreamsearch.display import printable
from dreamsearch.errors import DreamsearchError
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
    from dreamsearch.evaluation.pixel_metrics import PIXEL_METRICS

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


def _embedded(
    library,
    folders,
    name,
    weights_dir,
    device,
    batch_size,
    problems: _Problems,
    quiet: bool,
    only: frozenset[str] | None = None,
):
    """Index ``folders`` (or the files ``only``) into the eval library with model ``name``;
    report unreadable files."""
    from dreamsearch.evaluation.eval_library import embed_folders
    from dreamsearch.models import load_model

    embedder = load_model(name, weights_dir=weights_dir, device=device)
    with progress_display(quiet) as progress:
        report = embed_folders(library, folders, embedder, batch_size, only, progress)
    for path, reason in report.failures:
        problems(f"{path}: {reason}")


def _library(library_path):
    from dreamsearch.layout import LibraryLayout, library_dir

    return LibraryLayout.prepare(library_dir(library_path))


@eval_group.command("nights")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True)
@model_options((DEFAULT_MODEL,), check=_models_or_pixel_metrics)
def nights(folder, split, model_names, batch_size, device, as_json, library_path, weights_dir) -> None:
    """NIGHTS 2AFC accuracy of each model (or of the pixel baselines `-m psnr`, `-m ssim`)
    on FOLDER, the official NIGHTS folder (data.csv, ref/, distort/). The split's images
    are embedded once and kept for later runs."""
    from dreamsearch.evaluation.nights import evaluate, read_nights, vector_distances
    from dreamsearch.evaluation.pixel_metrics import PIXEL_METRICS, pixel_distances

    rows = read_nights(folder, split)
    problems = _Problems()
    for line in rows.malformed:
        problems(line)
    if not rows.triplets:
        raise DreamsearchError(f"{folder}: no {split} triplets with at least 6 votes")
    library = _library(library_path)
    wanted = frozenset(Path(p).as_posix() for t in rows.triplets for p in (t.ref, t.left, t.right))
    results, skipped = {}, {}
    for name in model_names:
        if name in PIXEL_METRICS:
            distances = pixel_distances(folder, name, problems)
        else:
            from dreamsearch.evaluation.eval_library import folder_vectors

            _embedded(library, [folder], name, weights_dir, device, batch_size, problems, as_json, wanted)
            vectors = folder_vectors(library, folder, name)
            for relpath in sorted(wanted - vectors.keys()):
                if not (folder / relpath).exists():
                    problems(f"{folder / relpath}: no such file")
            distances = vector_distances(vectors)
        results[name], missed = evaluate(rows.triplets, distances, split)
        skipped[name] = len(missed)
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
    from dreamsearch.evaluation.eval_library import eval_library, folder_vectors
    from dreamsearch.evaluation.retrieval import evaluate_retrieval, labels_of
    from dreamsearch.search import Searcher

    library = _library(library_path)
    problems = _Problems()
    scores = {}
    for name in model_names:
        _embedded(library, [folder], name, weights_dir, device, batch_size, problems, as_json)
        labels = labels_of(folder, list(folder_vectors(library, folder, name)), groups)
        with Searcher(eval_library(library), name) as searcher:
            scores[name] = evaluate_retrieval(searcher, folder, labels, k)
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
    from dreamsearch.evaluation.copies import TRANSFORMS, copies_folder, evaluate_copies, make_copies
    from dreamsearch.evaluation.eval_library import eval_library, folder_vectors
    from dreamsearch.scan import scan
    from dreamsearch.search import Searcher

    library = _library(library_path)
    evals = eval_library(library)
    out = copies_folder(evals.root, folder)
    problems = _Problems()
    originals = [folder / found.relpath for found in scan(folder)]
    readable = make_copies(originals, folder, out, problems)
    if not readable:
        raise DreamsearchError(f"{folder}: no readable images")
    if not as_json:  # the progress total counts both folders: say what it is made of
        edited = readable * len(TRANSFORMS)
        click.echo(
            f"{readable} originals + {edited} edited copies ({len(TRANSFORMS)} edits each) = "
            f"{readable + edited} images per model, each embedded once and kept for later runs",
            err=True,
        )
    table = {}
    for name in model_names:
        _embedded(library, [folder, out], name, weights_dir, device, batch_size, problems, as_json)
        with Searcher(evals, name) as searcher:
            table[name] = evaluate_copies(searcher, folder, out, folder_vectors(library, folder, name), k)
    problems.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "k": k,
                    "copies_folder": str(out),
                    "models": {
                        name: [{key: _finite(value) for key, value in vars(s).items()} for s in rows]
                        for name, rows in table.items()
                    },
                }
            )
        )
        return
    _table(
        f"copy detection on {folder} (copies in {out})",
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
