"""The JSON documents of results, comparisons and duplicate groups: one definition for
the CLI's ``--json`` output and the HTTP API, so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.compare import Overlap
    from dreamsearch.duplicates import DuplicateFile, DuplicateGroup
    from dreamsearch.search import Match


def result_document(match: Match) -> dict:
    """``{"rank", "distance", "path", "size", "also_at", "id", "width", "height", "links"}``:
    ``also_at`` holds the other files with the same bytes, ``links`` the other paths of
    those same files (hard links, bind mounts, followed symlinks)."""
    result = asdict(match)
    result["distance"] = round(match.distance, 6)
    result["also_at"] = list(match.also_at)
    result["links"] = list(match.links)
    return result


def comparison_document(query: str, k: int, results: dict[str, list[Match]], overlaps: list[Overlap]) -> dict:
    """``{"query", "k", "models": {NAME: [RESULT, ...]}, "overlap": [{"models": [A, B],
    "common", "jaccard", "rank_correlation"}]}``."""
    return {
        "query": query,
        "k": k,
        "models": {name: [result_document(m) for m in matches] for name, matches in results.items()},
        "overlap": [
            {
                "models": list(o.models),
                "common": o.common,
                "jaccard": round(o.jaccard, 6),
                "rank_correlation": None if o.rank_correlation is None else round(o.rank_correlation, 6),
            }
            for o in overlaps
        ],
    }


def duplicates_document(groups: list[DuplicateGroup], model: str, max_distance: float) -> dict:
    """``{"model", "max_distance", "groups": [{"kind", "keeper": FILE, "others": [FILE, ...]}],
    "summary": {"identical_groups", "similar_groups", "removable_files", "removable_bytes"}}``,
    FILE being ``{"id", "path", "size", "width", "height", "mtime_ns", "distance", "links"}``
    (``links``: other paths of the same file on disk, which free nothing); the summary
    counts each non-keeper file once."""
    from dreamsearch.duplicates import summarize

    return {
        "model": model,
        "max_distance": max_distance,
        "groups": [{"kind": g.kind, "keeper": _file(g.keeper), "others": [_file(f) for f in g.others]} for g in groups],
        "summary": asdict(summarize(groups)),
    }


def _file(f: DuplicateFile) -> dict:
    result = asdict(f)
    del result["file_key"]
    result["distance"] = round(f.distance, 6)
    result["links"] = list(f.links)
    return result
