"""Retrieval quality on a labelled folder: every image queries all the others.

Labels come from the first sub-folder (``DIR/<label>/...``) or from a CSV with columns
``path,group``. Images without a label stay in the collection as distractors but do not
query. For a query with R relevant images (same label, itself excluded) and the top-k list:
- recall@1: the first result is relevant;
- recall@k: at least one of the top k is relevant;
- AP@k = (1 / min(R, k)) · Σ_{i ≤ k} precision@i · relevant_i, and mAP@k its mean.
Queries with R = 0 are left out of every mean.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamsearch.errors import DreamsearchError
from dreamsearch.search import Searcher


@dataclass(frozen=True)
class RetrievalScores:
    queries: int
    k: int
    recall_at_1: float
    recall_at_k: float
    map_at_k: float
    search_ms_p50: float
    search_ms_p95: float


def labels_of(folder: Path, relpaths: Sequence[str], groups_csv: Path | None = None) -> dict[str, str]:
    """``{relative path: label}`` for the labelled ones of ``relpaths``."""
    if groups_csv is None:
        return {p: p.split("/", 1)[0] for p in relpaths if "/" in p}
    labels = {}
    with open(groups_csv, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if not {"path", "group"} <= set(reader.fieldnames or []):
            raise DreamsearchError(f"{groups_csv}: needs the columns path,group")
        for row in reader:
            path = Path(row["path"])
            if path.is_absolute() and not path.resolve().is_relative_to(folder.resolve()):
                raise DreamsearchError(f"{groups_csv}: {path} is not inside {folder}")
            relative = path.resolve().relative_to(folder.resolve()) if path.is_absolute() else path
            labels[relative.as_posix()] = row["group"]
    known = set(relpaths)
    return {p: label for p, label in labels.items() if p in known}


def ranking_metrics(
    relevance: Sequence[Sequence[bool]], relevant_counts: Sequence[int], k: int
) -> tuple[float, float, float]:
    """``(recall@1, recall@k, mAP@k)`` from each query's top-k relevance flags."""
    hits1, hitsk, aps = [], [], []
    for query_flags, total in zip(relevance, relevant_counts, strict=True):
        if total == 0:
            continue
        flags = np.asarray(query_flags[:k], dtype=bool)
        hits1.append(bool(flags[:1].any()))
        hitsk.append(bool(flags.any()))
        precision = np.cumsum(flags) / np.arange(1, len(flags) + 1)
        aps.append(float((precision * flags).sum() / min(total, k)))
    if not aps:
        raise DreamsearchError("no image has another image with the same label; nothing to evaluate")
    return float(np.mean(hits1)), float(np.mean(hitsk)), float(np.mean(aps))


def evaluate_retrieval(searcher: Searcher, folder: Path, labels: dict[str, str], k: int) -> RetrievalScores:
    """Query every labelled image of ``folder`` (by its stored vector) against the rest."""
    folder = Path(folder).resolve()
    counts = Counter(labels.values())
    relevance, totals, seconds = [], [], []
    for relpath, label in sorted(labels.items()):
        vector, content_id = searcher.stored_vector(folder / relpath)
        began = time.perf_counter()
        matches = searcher.search(vector, k, [content_id], under=folder)
        seconds.append(time.perf_counter() - began)
        found = [labels.get(Path(m.path).relative_to(folder).as_posix()) for m in matches]
        relevance.append([other == label for other in found])
        totals.append(counts[label] - 1)
    recall1, recallk, mean_ap = ranking_metrics(relevance, totals, k)
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return RetrievalScores(sum(t > 0 for t in totals), k, recall1, recallk, mean_ap, float(p50), float(p95))
