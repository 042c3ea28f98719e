"""``dreamsearch query``, ``compare`` and ``duplicates``: reading the library."""

from __future__ import annotations

from pathlib import Path

import click

from dreamsearch.cli.common import (
    DEVICE_CHOICES,
    library_option,
    model_list,
    model_names,
    precision_option,
    stdin_paths,
    weights_dir_option,
    write_sheets,
)
from dreamsearch.defaults import DEFAULT_NPROBE
from dreamsearch.display import printable
from dreamsearch.errors import DreamsearchError
from dreamsearch.models import text_model_spec
from dreamsearch.models.registry import DEFAULT_MODEL, DEFAULT_TEXT_MODEL, get_spec
from dreamsearch.reading import NOT_REGULAR_FILE

PREVIEW_HELP = (
    "Also draw each result's thumbnail in the terminal (kitty graphics, iTerm2 or sixel where the "
    "terminal has them, else coloured half blocks); never when stdout is not a terminal."
)


def show_previews(blocks) -> None:
    """The results' thumbnails after the table, when stdout is a terminal (said on stderr
    otherwise: escape sequences would corrupt a pipe or a file)."""
    from dreamsearch.previews import draw_previews, stdout_is_terminal

    if stdout_is_terminal():
        draw_previews(blocks)
    else:
        click.echo("note: --preview draws only on a terminal (stdout is not one)", err=True)


def _check_image_file(path: Path) -> None:
    """A query image must be a file; a folder gets told what to pass instead."""
    if path.is_dir():
        raise DreamsearchError(
            f"{path} is a folder: give an image file (or `dreamsearch index {path}` to add the folder)"
        )
    _check_not_special(path)
    if not path.is_file():
        raise DreamsearchError(f"{path}: no such file")


def _check_not_special(path: Path) -> None:
    """A pipe, socket or device is named as such (``stat`` only: opening a FIFO would wait)."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise DreamsearchError(f"{path}: {NOT_REGULAR_FILE}")


@click.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path, allow_dash=True))
@click.option("-k", "k", default=25, show_default=True, type=int, help="How many results per query.")
@click.option(
    "-m",
    "--model",
    "model_name",
    default=None,
    help=f"Model whose vectors to search  [default: {DEFAULT_MODEL}; clip with --text].",
)
@click.option(
    "--text",
    "texts",
    multiple=True,
    metavar="WORDS",
    help="Query with words, through CLIP's text tower (searches the library's clip vectors).",
)
@click.option(
    "--like",
    "like",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Query with the stored vector of an indexed file (no model is loaded).",
)
@click.option("--include-self", is_flag=True, help="Keep the query's own content in its results.")
@click.option("--max-distance", type=float, default=None, help="Only results at most this far (0..2).")
@click.option("--under", type=click.Path(path_type=Path), default=None, help="Only results inside this folder.")
@click.option(
    "--combine",
    type=click.Choice(["none", "mean"]),
    default="none",
    show_default=True,
    help="mean: one query from the mean of all query images and texts.",
)
@click.option("--json", "fmt", flag_value="json", help="One JSON document.")
@click.option("--jsonl", "fmt", flag_value="jsonl", help="One JSON object per result.")
@click.option(
    "--csv",
    "fmt",
    flag_value="csv",
    help="CSV: query,rank,distance,path,size,copy_of (a row per copy, see docs/output.md).",
)
@click.option("-0", "fmt", flag_value="null", help="Result paths separated by NUL (for xargs -0).")
@click.option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw a contact sheet of the results (PNG).",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a self-contained HTML page of the results.",
)
@click.option("-v", "--verbose", is_flag=True, help="Table: list every copy of a result, not their count.")
@click.option("--preview", is_flag=True, help=PREVIEW_HELP)
@click.option(
    "--nprobe", default=DEFAULT_NPROBE, show_default=True, type=click.IntRange(1), help="IVF lists to search."
)
@click.option(
    "--no-server",
    is_flag=True,
    help="Embed here even when a `dreamsearch serve` of this library is running (it is used by default).",
)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@precision_option(None)
@library_option
@weights_dir_option
def query(
    images,
    k,
    model_name,
    texts,
    like,
    include_self,
    max_distance,
    under,
    combine,
    fmt,
    grid,
    html_out,
    verbose,
    preview,
    nprobe,
    no_server,
    device,
    precision,
    library_path,
    weights_dir,
) -> None:
    """Find the images in the library most similar to IMAGES (files, or '-' to read paths
    from stdin), or to --text WORDS. Distances are 1 - cosine in the model's space, exact."""
    if k <= 0:
        raise DreamsearchError("-k must be at least 1")
    model_name = model_name or (DEFAULT_TEXT_MODEL if texts else DEFAULT_MODEL)
    get_spec(model_name)
    if texts:
        text_model_spec(model_name)
        if not all(text.strip() for text in texts):
            raise DreamsearchError("--text is empty: give words to search for")
    files = [Path(line) for arg in images for line in (stdin_paths() if str(arg) == "-" else [arg])]
    if not files and not like and not texts:
        raise DreamsearchError("give at least one query image (a file, '-' for stdin, or --like PATH) or --text WORDS")
    for path in files:
        _check_image_file(path)
    for path in like:
        _check_not_special(path)
    if files:  # a running server embeds them, or the model loads, while the catalog's imports load
        from dreamsearch.models import load_ahead
        from dreamsearch.warm import ask_ahead

        if no_server or not ask_ahead(library_path, files, model_name):
            load_ahead(model_name, weights_dir=weights_dir, device=device, precision=precision)
    from dreamsearch.api import Library, Query  # after the checks: a mistake is told before the catalog's imports
    from dreamsearch.output import render

    with Library.open(
        library_path,
        weights_dir=weights_dir,
        device=device,
        nprobe=nprobe,
        use_server=not no_server,
        precision=precision,
    ) as library:
        queries = [library.query(like=path, model=model_name) for path in like]
        queries += [library.query(path, model=model_name) for path in files]
        queries += [library.query(text=text, model=model_name) for text in texts]
        if combine == "mean":
            queries = [Query.mean(queries)]
        results = [
            (q, library.search(q, k=k, include_self=include_self, max_distance=max_distance, under=under).matches)
            for q in queries
        ]
    for note in (n for q, _matches in results for n in q.notes):
        click.echo(f"note: {printable(note)}", err=True)
    render([(q.label, matches) for q, matches in results], fmt, model_name, verbose)
    if preview:
        show_previews([(q.label, matches) for q, matches in results])
    if grid or html_out:
        from dreamsearch.contact_sheet import result_row

        write_sheets(
            [result_row(q.label, list(q.pictures), matches, model_name) for q, matches in results],
            grid,
            html_out,
            f"dreamsearch query ({model_name})",
        )


def _indexed_models(library) -> list[str]:
    """What ``compare`` compares when no --models is given: every model the library holds
    vectors of, as the web UI does, in ``models list`` order (DreamSim first)."""
    from dreamsearch.models.registry import MODELS

    counts = library.vector_counts()
    indexed = [name for name in MODELS if counts.get(name)]
    if len(indexed) < 2:
        held = f"only '{indexed[0]}'" if indexed else "no model yet"
        raise DreamsearchError(
            f"compare needs two indexed models and this library has {held}: "
            "index with another (e.g. `dreamsearch index FOLDER -m clip`), or give --models"
        )
    return indexed


@click.command()
@click.argument("image", required=False, type=click.Path(path_type=Path))
@click.option(
    "--like",
    type=click.Path(path_type=Path),
    default=None,
    help="Query with the stored vectors of an indexed file instead of IMAGE (no model is loaded for "
    "the models that have its vector).",
)
@click.option("-k", "k", default=25, show_default=True, type=click.IntRange(1), help="How many results per model.")
@click.option(
    "--models",
    "names",
    default=None,
    callback=model_list,
    help="Comma-separated models to compare (each must be indexed)  [default: every indexed model].",
)
@click.option("--include-self", is_flag=True, help="Keep the query's own content in the results.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (results and agreement).")
@click.option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the results, one row per model (PNG).",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a self-contained HTML page, one section per model.",
)
@click.option(
    "--no-server",
    is_flag=True,
    help="Embed here even when a `dreamsearch serve` of this library is running (it is used by default).",
)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICES)
@precision_option(None)
@click.option("--preview", is_flag=True, help=PREVIEW_HELP)
@library_option
@weights_dir_option
def compare(
    image,
    like,
    k,
    names,
    include_self,
    as_json,
    grid,
    html_out,
    no_server,
    device,
    precision,
    preview,
    library_path,
    weights_dir,
) -> None:
    """Query IMAGE (or the indexed file --like PATH) through several models side by side,
    with how much their top-k agree (Jaccard overlap and Spearman rank correlation)."""
    if (image is None) == (like is None):
        raise DreamsearchError("give one query: an image file, or --like PATH (an indexed file)")
    if image is not None:
        _check_image_file(image)
    if like is not None:
        _check_not_special(like)
    if len(names) == 1:
        raise DreamsearchError("--models needs at least two model names, separated by commas")
    from dreamsearch.api import Library  # after the checks: a mistake is told before the catalog's imports
    from dreamsearch.output import render_comparison

    with Library.open(
        library_path, weights_dir=weights_dir, device=device, use_server=not no_server, precision=precision
    ) as library:
        names = names or _indexed_models(library)
        comparison = library.compare(image, names, k=k, include_self=include_self, keep_models=False, like=like)
    render_comparison(comparison.query, comparison.k, comparison.results, comparison.overlaps, as_json)
    if preview:
        show_previews(list(comparison.results.items()))
    if grid or html_out:
        from dreamsearch.contact_sheet import comparison_rows, write_html
        from dreamsearch.output import agreement_rows

        source = str(image or like)
        title = f"dreamsearch compare: {source}"
        query_row, *model_rows = comparison_rows(source, comparison.k, comparison.results)
        write_sheets([query_row, *model_rows], grid, None, title)
        if html_out:  # the models side by side, under their agreement
            write_html(
                [query_row],
                html_out,
                title,
                table=agreement_rows(comparison.overlaps, comparison.k),
                side_by_side=model_rows,
            )
            click.echo(f"wrote {printable(str(html_out))}", err=True)


@click.command()
@click.option("-m", "--model", "model_name", default=DEFAULT_MODEL, show_default=True, callback=model_names)
@click.option(
    "--max-distance",
    type=click.FloatRange(0, 2),
    default=None,
    help="Join images at most this far apart (default: the model's, see docs/duplicates.md).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a self-contained HTML page of the groups.",
)
@library_option
def duplicates(model_name, max_distance, as_json, html_out, library_path) -> None:
    """Groups of identical and near-identical images in the whole library, each with a
    suggested keeper (most pixels, then oldest)."""
    from dreamsearch.api import Library
    from dreamsearch.output import render_duplicates

    with Library.open(library_path) as library:
        max_distance = library.default_duplicate_distance(model_name) if max_distance is None else max_distance
        groups = library.duplicates(model_name, max_distance=max_distance)
    render_duplicates(groups, model_name, max_distance, as_json)
    if html_out:
        from dreamsearch.contact_sheet import duplicate_rows

        write_sheets(duplicate_rows(groups), None, html_out, f"dreamsearch duplicates ({model_name})")
