"""``dreamsearch query``, ``compare`` and ``duplicates``: reading the library."""

from __future__ import annotations

from pathlib import Path

import click

from dreamsearch.cli.common import DEVICE_CHOICES, library_option, stdin_paths, weights_dir_option, write_sheets
from dreamsearch.errors import DreamsearchError


@click.command()
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
    from dreamsearch.api import Library
    from dreamsearch.output import render

    if k <= 0:
        raise DreamsearchError("-k must be at least 1")
    files = [Path(line) for arg in images for line in (stdin_paths() if str(arg) == "-" else [arg])]
    if not files and not like:
        raise DreamsearchError("give at least one query image (a file, '-' for stdin, or --like PATH)")
    for path in files:
        if not path.is_file():
            raise DreamsearchError(f"{path}: no such file")
    with Library.open(library_path, weights_dir=weights_dir, device=device, nprobe=nprobe) as library:
        queries = [library.stored_query(path, model_name) for path in like]
        queries += [library.image_query(path, model_name) for path in files]
        if combine == "mean":
            queries = [library.mean_query(queries)]
        results = [(q, library.search(q, k, include_self, max_distance, under).matches) for q in queries]
    render([(q.label, matches) for q, matches in results], fmt, model_name)
    if grid or html_out:
        from dreamsearch.contact_sheet import result_row

        write_sheets([result_row(q.label, list(q.sources), matches, model_name) for q, matches in results],
                     grid, html_out, f"dreamsearch query ({model_name})")


@click.command()
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
    from dreamsearch.api import Library
    from dreamsearch.output import render_comparison

    names = list(dict.fromkeys(name.strip() for name in model_list.split(",") if name.strip()))
    if len(names) < 2:
        raise DreamsearchError("--models needs at least two model names, separated by commas")
    with Library.open(library_path, weights_dir=weights_dir, device=device) as library:
        comparison = library.compare(image, names, k, include_self, keep_models=False)
    render_comparison(comparison.query, comparison.k, comparison.results, comparison.overlaps, as_json)
    if grid or html_out:
        from dreamsearch.contact_sheet import result_row

        rows = [result_row(str(image), [str(image)], matches, name) for name, matches in comparison.results.items()]
        write_sheets(rows, grid, html_out, f"dreamsearch compare: {image}")


@click.command()
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

        write_sheets(duplicate_rows(groups), None, html_out, f"dreamsearch duplicates ({model_name})")
