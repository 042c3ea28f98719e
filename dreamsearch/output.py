"""How results (query, compare, duplicates) are printed. Machine formats are stable
(documented in README). Query:

- ``json``: ``{"model": M, "queries": [{"query": Q, "results": [RESULT, ...]}, ...]}``
- ``jsonl``: one ``{"query": Q, **RESULT}`` per line
- ``csv``: header ``query,rank,distance,path,size``
- ``null``: result paths separated by NUL

where RESULT is ``{"rank", "distance", "path", "size", "also_at", "id", "width", "height"}``
(``id``: the file's catalog id, as the HTTP API uses it; ``width``/``height``: pixels).

Any file name survives every format (docs/output.md): JSON and JSONL are UTF-8 with the
bytes of a name that are not UTF-8 written as ``\\udcXX`` escapes (``os.fsencode`` of
the parsed string gives the name's bytes back); CSV and ``-0`` carry names as their raw
bytes. Tables show names through :func:`~dreamsearch.paths.display_path`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import TYPE_CHECKING

from dreamsearch.documents import comparison_document, duplicates_document, result_document
from dreamsearch.paths import display_path, human_bytes

if TYPE_CHECKING:  # dreamsearch.search imports torch: `duplicates` must not pay for it
    from dreamsearch.compare import Overlap
    from dreamsearch.duplicates import DuplicateGroup
    from dreamsearch.search import Match


def render(blocks: list[tuple[str, list[Match]]], fmt: str | None, model: str) -> None:
    """Print query results as a table or in the machine format ``fmt``."""
    if fmt == "json":
        document = {"model": model, "queries": [
            {"query": label, "results": [result_document(m) for m in matches]} for label, matches in blocks]}
        _write_json_lines([document])
    elif fmt == "jsonl":
        _write_json_lines([{"query": label, **result_document(m)} for label, matches in blocks for m in matches])
    elif fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["query", "rank", "distance", "path", "size"])
        for label, matches in blocks:
            for m in matches:
                writer.writerow([label, m.rank, f"{m.distance:.6f}", m.path, m.size])
        _write_bytes(text.getvalue().encode("utf-8", "surrogateescape"))
    elif fmt == "null":
        _write_bytes(b"".join(m.path.encode("utf-8", "surrogateescape") + b"\0" for _l, ms in blocks for m in ms))
    else:
        _table(blocks, model)


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


def _table(blocks: list[tuple[str, list[Match]]], model: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for label, matches in blocks:
        table = Table(title=_literal(f"{display_path(label)} ({model})"), title_justify="left")
        for column in ("#", "distance", "path", "size"):
            table.add_column(column, justify="right" if column != "path" else "left")
        for m in matches:
            path = display_path(m.path) + "".join(f"\n  also {display_path(p)}" for p in m.also_at)
            table.add_row(str(m.rank), f"{m.distance:.4f}", _literal(path), human_bytes(m.size))
        if not matches:
            table.add_row("-", "-", "no results", "-")
        console.print(table)


def _literal(text: str):
    """``text`` for a rich table as it is: a plain ``str`` would be read as console markup
    (``[red]``) and emoji codes (``:smile:``), which file names may hold."""
    from rich.text import Text

    return Text(text)


def render_comparison(query: str, k: int, results: dict[str, list[Match]], overlaps: list[Overlap],
                      as_json: bool) -> None:
    """``compare``'s output. JSON: ``{"query", "k", "models": {NAME: [RESULT, ...]},
    "overlap": [{"models": [A, B], "common", "jaccard", "rank_correlation"}]}``."""
    if as_json:
        _write_json_lines([comparison_document(query, k, results, overlaps)])
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    side_by_side = Table(title=_literal(f"{display_path(query)}: top {k} per model"), title_justify="left")
    side_by_side.add_column("#", justify="right")
    for name in results:
        side_by_side.add_column(name)
    for rank in range(1, max((len(m) for m in results.values()), default=0) + 1):
        cells = [_literal(f"{display_path(os.path.basename(ms[rank - 1].path))} ({ms[rank - 1].distance:.4f})")
                 if rank <= len(ms) else "" for ms in results.values()]
        side_by_side.add_row(str(rank), *cells)
    console.print(side_by_side)
    agreement = Table(title="agreement between models", title_justify="left")
    for column in ("models", "common", "jaccard", "rank correlation"):
        agreement.add_column(column, justify="left" if column == "models" else "right")
    for o in overlaps:
        rho = "n/a" if o.rank_correlation is None else f"{o.rank_correlation:+.3f}"
        agreement.add_row(" vs ".join(o.models), f"{o.common}/{k}", f"{o.jaccard:.3f}", rho)
    console.print(agreement)


def render_duplicates(groups: list[DuplicateGroup], model: str, max_distance: float, as_json: bool) -> None:
    """``duplicates``' output. JSON: ``{"model", "max_distance", "groups": [{"kind":
    "identical"|"similar", "keeper": FILE, "others": [FILE, ...]}]}``, FILE being
    ``{"id", "path", "size", "width", "height", "mtime_ns", "distance"}`` (distance to the keeper)."""
    if as_json:
        _write_json_lines([duplicates_document(groups, model, max_distance)])
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for number, group in enumerate(groups, 1):
        table = Table(title=f"{group.kind} group {number}: {len(group.files)} files", title_justify="left")
        for column in ("", "distance", "pixels", "size", "path"):
            table.add_column(column, justify="left" if column in ("", "path") else "right")
        for f in group.files:
            pixels = f"{f.width}x{f.height}" if f.width and f.height else "?"
            table.add_row("keep" if f is group.keeper else "", f"{f.distance:.4f}", pixels, human_bytes(f.size),
                          _literal(display_path(f.path)))
        console.print(table)
    identical = sum(g.kind == "identical" for g in groups)
    spare = sum(len(g.others) for g in groups)
    console.print(f"{identical} identical and {len(groups) - identical} similar groups "
                  f"({model}, max distance {max_distance:g}); {spare} files beside their keepers")
