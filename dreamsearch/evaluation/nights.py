"""NIGHTS 2AFC accuracy, following the official DreamSim evaluation exactly.

Protocol (``dataset/dataset.py`` and ``evaluation/score.py`` of the official repository):
keep rows of ``data.csv`` with ``votes >= 6``; ``d0 = d(ref, left)``, ``d1 = d(ref, right)``;
a triplet scores ``(d0 < d1)·(1 − right_vote) + (d1 < d0)·right_vote + (d0 == d1)·0.5``;
accuracy is the mean score. Splits: ``train``, ``val``, and ``test`` divided by
``is_imagenet`` into ``test_imagenet`` and ``test_no_imagenet``; the test total weighs
both by their triplet counts (it is the mean over all test triplets).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamsearch.errors import DreamsearchError

MIN_VOTES = 6
COLUMNS = ("id", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
SPLIT_CHOICES = {
    "test": ("test_imagenet", "test_no_imagenet"),
    "val": ("val",),
    "train": ("train",),
    "all": ("train", "val", "test_imagenet", "test_no_imagenet"),
}
BOOTSTRAP_ROUNDS = 1000


@dataclass(frozen=True)
class Triplet:
    id: str
    ref: str
    left: str
    right: str
    right_vote: float
    split: str  # train, val, test_imagenet or test_no_imagenet


@dataclass(frozen=True)
class NightsRows:
    triplets: list[Triplet]
    malformed: list[str]  # "data.csv line N: reason"
    too_few_votes: int


@dataclass(frozen=True)
class Accuracy:
    accuracy: float
    low: float  # bootstrap 95% interval
    high: float
    triplets: int


def read_nights(folder: Path, split: str = "test") -> NightsRows:
    """The triplets of ``split`` (a key of ``SPLIT_CHOICES``) with enough votes."""
    table = Path(folder) / "data.csv"
    if not table.is_file() or not (Path(folder) / "ref").is_dir() or not (Path(folder) / "distort").is_dir():
        raise DreamsearchError(f"{folder} is not a NIGHTS folder (it needs data.csv, ref/ and distort/)")
    wanted = set(SPLIT_CHOICES[split])
    triplets, malformed, too_few = [], [], 0
    with open(table, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        lacking = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if lacking:
            raise DreamsearchError(f"{table} is not a NIGHTS data.csv (no column {', '.join(lacking)})")
        for line, row in enumerate(reader, start=2):
            try:
                triplet, votes = _parse(row)
            except ValueError as exc:
                malformed.append(f"{table.name} line {line}: {exc}")
                continue
            if votes < MIN_VOTES:
                too_few += 1
            elif triplet.split in wanted:
                triplets.append(triplet)
    return NightsRows(triplets, malformed, too_few)


def _parse(row: dict) -> tuple[Triplet, float]:
    if any(row.get(c) in (None, "") for c in COLUMNS):
        raise ValueError("missing values")
    votes, right_vote = float(row["votes"]), float(row["right_vote"])
    if not 0.0 <= right_vote <= 1.0:
        raise ValueError(f"right_vote {right_vote} is not between 0 and 1")
    split = row["split"].strip()
    if split == "test":
        imagenet = row["is_imagenet"].strip().lower()
        if imagenet not in ("true", "false", "1", "0"):
            raise ValueError(f"is_imagenet '{row['is_imagenet']}' is not true or false")
        split = "test_imagenet" if imagenet in ("true", "1") else "test_no_imagenet"
    elif split not in ("train", "val"):
        raise ValueError(f"unknown split '{split}'")
    ref, left, right = (row[c].strip() for c in ("ref_path", "left_path", "right_path"))
    return Triplet(row["id"].strip(), ref, left, right, right_vote, split), votes


def triplet_scores(d0: np.ndarray, d1: np.ndarray, right_vote: np.ndarray) -> np.ndarray:
    """The official per-triplet 2AFC score."""
    return (d0 < d1) * (1.0 - right_vote) + (d1 < d0) * right_vote + (d0 == d1) * 0.5


def accuracy(scores: np.ndarray, seed: int = 0) -> Accuracy:
    """Mean score with a percentile bootstrap 95% interval (triplets resampled)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return Accuracy(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), (BOOTSTRAP_ROUNDS, len(scores)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Accuracy(float(scores.mean()), float(low), float(high), len(scores))


def evaluate(
    triplets: Sequence[Triplet], distances: Callable[[Triplet], tuple[float, float] | None], split: str
) -> tuple[dict[str, Accuracy], list[Triplet]]:
    """Accuracy per split of ``split`` (plus the ``test`` total), and the triplets that were
    skipped because ``distances`` had no answer (an image missing or unreadable)."""
    by_split: dict[str, list[float]] = {name: [] for name in SPLIT_CHOICES[split]}
    skipped = []
    for triplet in triplets:
        pair = distances(triplet)
        if pair is None:
            skipped.append(triplet)
            continue
        score = triplet_scores(np.float64(pair[0]), np.float64(pair[1]), np.float64(triplet.right_vote))
        by_split[triplet.split].append(float(score))
    results = {name: accuracy(np.array(scores)) for name, scores in by_split.items()}
    if split in ("test", "all"):
        results["test"] = accuracy(np.array(by_split["test_imagenet"] + by_split["test_no_imagenet"]))
    return results, skipped


def vector_distances(vectors: dict[str, np.ndarray]) -> Callable[[Triplet], tuple[float, float] | None]:
    """DreamSim distance ``1 - cosine`` from stored unit vectors, by relative path."""

    def distances(t: Triplet) -> tuple[float, float] | None:
        ref, left, right = (vectors.get(Path(p).as_posix()) for p in (t.ref, t.left, t.right))
        if ref is None or left is None or right is None:
            return None
        return 1.0 - float(ref @ left), 1.0 - float(ref @ right)

    return distances
