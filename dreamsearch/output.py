"""How results (query, compare, duplicates) are printed. Machine formats are stable
(documented in README). Query:

- ``json``: ``{"model": M, "queries": [{"query": Q, "results": [RESULT, ...]}, ...]}``
- ``jsonl``: one ``{"query": Q, **RESULT}`` per line
- ``csv``: header ``query,rank,distance,path,size,copy_of``; one row per result (``copy_of``
  empty), each followed by one row per other path of the same file (``also_at``), with the
  result's query, rank, distance and size and its path in ``copy_of``: every line one file
- ``null``: result paths separated by NUL

where RESULT is ``{"rank", "distance", "path", "size", "also_at", "id", "width", "height", "links"}``
(``id``: the file's catalog id, as the HTTP API uses it; ``width``/``height``: pixels;
``links``: other paths of the same files on disk, such as hard links, which are not copies).

Any file name survives every format (docs/output.md): JSON and JSONL are UTF-8 with the
bytes of a name that are not UTF-8 written as ``\\udcXX`` escapes (``os.fsencode`` of
the parsed string gives the name's bytes back); CSV and ``-0`` carry names as their raw
bytes. Tables show names through :func:`~dreamsearch.display.display_path`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from dreamsearch.display import display_path, human_bytes, short_path
from dreamsearch.documents import comparison_document, duplicates_document, result_document

if TYPE_CHECKING:  # dreamsearch.search imports torch: `duplicates` must not pay for it
    from pathlib import Path

    from dreamsearch.batch_embed import EmbeddedFiles
    from dreamsearch.compare import Overlap
    from dreamsearch.duplicates import DuplicateGroup
    from dreamsearch.search import Match


def render(blocks: list[tuple[str, list[Match]]], fmt: str | None, model: str, verbose: bool = False) -> None:
    """Print query results as a table (a result's copies counted, or listed if ``verbose``)
    or in the machine format ``fmt``."""
    if fmt == "json":
        document = {
            "model": model,
            "queries": [
                {"query": label, "results": [result_document(m) for m in matches]} for label, matches in blocks
            ],
        }
        _write_json_lines([document])
    elif fmt == "jsonl":
        _write_json_lines([{"query": label, **result_document(m)} for label, matches in blocks for m in matches])
    elif fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["query", "rank", "distance", "path", "size", "copy_of"])
        for label, matches in blocks:
            for m in matches:
                writer.writerow([label, m.rank, f"{m.distance:.6f}", m.path, m.size, ""])
                writer.writerows([label, m.rank, f"{m.distance:.6f}", p, m.size, m.path] for p in m.also_at)
        _write_bytes(text.getvalue().encode("utf-8", "surrogateescape"))
    elif fmt == "null":
        _write_bytes(b"".join(m.path.encode("utf-8", "surrogateescape") + b"\0" for _l, ms in blocks for m in ms))
    else:
        _table(blocks, model, verbose)


def _write_json_lines(documents: list[dict]) -> None:
    """One JSON document per line, UTF-8, readable non-ASCII kept as is. ``json.dumps``
    leaves a name's undecodable bytes (lone surrogates) raw in its strings; encoding them
    with ``backslashreplace`` turns exactly those into ``\\udcXX`` escapes, which
    ``json.loads`` reads back as the same surrogates."""
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in documents)
    _write_bytes(text.encode("utf-8", "backslashreplace"))


def _write_bytes(data: bytes) -> None:
    """Write encoded output past stdout's text layer, whose error handler depends on the
    locale: strict (a crash halfway) or surrogateescape (raw bytes inside JSON)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


#: A four-column table's frame: five borders and a space either side of each cell.
_TABLE_FRAME = 13


def _table(blocks: list[tuple[str, list[Match]]], model: str, verbose: bool) -> None:
    """One table per query, as wide as the terminal: paths shortened in the middle so that
    file names show whole, and one line per result unless ``verbose``."""
    from rich.console import Console

    console = Console()
    columns = ("#", "distance", "path", "size")
    for label, matches in blocks:
        table = new_table(
            f"{display_path(label)} ({model})",
            columns,
            right=("#", "distance", "size"),
            fold=columns,
            caption_justify="left",
        )
        sizes = [human_bytes(m.size) for m in matches]
        width = (
            console.width
            - _TABLE_FRAME
            - len("distance")
            - len(str(max((m.rank for m in matches), default=1)))
            - max(map(len, ["size", *sizes]))
        )
        for m, size in zip(matches, sizes, strict=True):
            table.add_row(str(m.rank), f"{m.distance:.4f}", _literal(_path_cell(m, width, verbose)), size)
        if not verbose and any(len(m.also_at) > 1 for m in matches):
            table.caption = "+N copies: the same file at N other paths (-v lists them)"
        if not matches:
            table.add_row("-", "-", "no results", "-")
        console.print(table)


def _path_cell(m: Match, width: int, verbose: bool) -> str:
    """The result's path, then its other paths: listed when ``verbose`` or only one, else counted."""
    lines = [short_path(m.path, width)]
    if verbose or len(m.also_at) == 1:
        lines += [f"  also {short_path(p, width - len('  also '))}" for p in m.also_at]
    elif m.also_at:
        lines.append(f"  +{len(m.also_at)} copies")
    if verbose:
        lines += [f"  link {short_path(p, width - len('  link '))}" for p in m.links]
    return "\n".join(lines)


def new_table(title: str, columns: Sequence[str], right: Collection[str] = (), fold: Collection[str] = (), **options):
    """How every command draws a table: a title on the left (shown as written, never read
    as markup), ``right`` columns right-aligned, ``fold`` columns wrapped rather than cut."""
    from rich.table import Table

    table = Table(title=_literal(title), title_justify="left", **options)
    for column in columns:
        table.add_column(
            column, justify="right" if column in right else "left", overflow="fold" if column in fold else "ellipsis"
        )
    return table


def _literal(text: str):
    """``text`` for a rich table as it is: a plain ``str`` would be read as console markup
    (``[red]``) and emoji codes (``:smile:``), which file names may hold."""
    from rich.text import Text

    return Text(text)


def render_comparison(
    query: str, k: int, results: dict[str, list[Match]], overlaps: list[Overlap], as_json: bool
) -> None:
    """``compare``'s output. JSON: ``{"query", "k", "models": {NAME: [RESULT, ...]},
    "overlap": [{"models": [A, B], "common", "jaccard", "rank_correlation"}]}``."""
    if as_json:
        _write_json_lines([comparison_document(query, k, results, overlaps)])
        return
    from rich.console import Console

    console = Console()
    # a long file name wraps, never cut
    side_by_side = new_table(f"{display_path(query)}: top {k} per model", ["#", *results], right=("#",), fold=results)
    for rank in range(1, max((len(m) for m in results.values()), default=0) + 1):
        cells = [
            _literal(f"{display_path(os.path.basename(ms[rank - 1].path))} ({ms[rank - 1].distance:.4f})")
            if rank <= len(ms)
            else ""
            for ms in results.values()
        ]
        side_by_side.add_row(str(rank), *cells)
    console.print(side_by_side)
    header, *rows = agreement_rows(overlaps, k)
    agreement = new_table("agreement between models", header, right=[c for c in header if c != "models"])
    for row in rows:
        agreement.add_row(*row)
    console.print(agreement)


def agreement_rows(overlaps: list[Overlap], k: int) -> list[list[str]]:
    """``compare``'s agreement table, header first: the terminal and the HTML page show the same."""
    rows = [["models", "common", "jaccard", "rank correlation"]]
    for o in overlaps:
        rho = "n/a" if o.rank_correlation is None else f"{o.rank_correlation:+.3f}"
        rows.append([" vs ".join(o.models), f"{o.common}/{k}", f"{o.jaccard:.3f}", rho])
    return rows


def render_duplicates(groups: list[DuplicateGroup], model: str, max_distance: float, as_json: bool) -> None:
    """``duplicates``' output. JSON: ``{"model", "max_distance", "groups": [{"kind":
    "identical"|"similar", "keeper": FILE, "others": [FILE, ...]}], "summary": {"identical_groups",
    "similar_groups", "removable_files", "removable_bytes"}}``, FILE being ``{"id", "path", "size",
    "width", "height", "mtime_ns", "distance", "links"}`` (distance to the keeper; links: other
    paths of the same file on disk). The table notes, under a similar group's file, the
    identical group that lists its byte-identical copies, and under any file its links."""
    if as_json:
        _write_json_lines([duplicates_document(groups, model, max_distance)])
        return
    from rich.console import Console

    from dreamsearch.duplicates import identical_copies, summarize

    console = Console()
    copies = identical_copies(groups)
    for number, group in enumerate(groups, 1):
        table = new_table(
            f"{group.kind} group {number}: {len(group.files)} files",
            ("", "distance", "pixels", "size", "path"),
            right=("distance", "pixels", "size"),
        )
        for f in group.files:
            note = ""
            if group.kind == "similar" and f.id in copies:
                note = "\n  ×{1} identical: identical group {0}".format(*copies[f.id])
            note += "".join(f"\n  link (the same file): {display_path(link)}" for link in f.links)
            table.add_row(
                "keep" if f is group.keeper else "",
                f"{f.distance:.4f}",
                f.dimensions,
                human_bytes(f.size),
                _literal(display_path(f.path) + note),
            )
        console.print(table)
    summary = summarize(groups)
    console.print(
        f"{summary.identical_groups} identical and {summary.similar_groups} similar groups "
        f"({model}, max distance {max_distance:g})"
    )
    console.print(f"{summary.removable_files} files could go, freeing {human_bytes(summary.removable_bytes)}")


def write_embeddings(result: EmbeddedFiles, output: Path, fmt: str) -> None:
    """``dreamsearch embed``'s file. ``npy``: float32 ``[N, dim]``, NaN rows for files not
    read. ``json`` (``-``: stdout): model, dim and one object per file, whose ``vector`` is
    null (and ``error`` says why) for those."""
    import numpy as np

    if fmt == "npy":
        np.save(output, result.vectors.astype(np.float32, copy=False))
        return
    reasons = {failure.path: failure.reason for failure in result.failures}
    document = {
        "model": result.model,
        "dim": int(result.vectors.shape[1]),
        "embeddings": [
            {"path": str(path), "vector": vector.tolist()}
            if str(path) not in reasons
            else {"path": str(path), "vector": None, "error": reasons[str(path)]}
            for path, vector in zip(result.paths, result.vectors, strict=True)
        ],
        "failed": [{"path": f.path, "reason": f.reason} for f in result.failures],
    }
    if str(output) == "-":
        json.dump(document, sys.stdout)
        sys.stdout.write("\n")
    else:
        output.write_text(json.dumps(document))
