"""``dreamsearch eval``'s measurements over the evaluation library (``Library.evaluation()``).

Evaluation images are indexed into a library of their own (``<library>/eval``), so a re-run
only checks file sizes and dates, and the user's search library never returns benchmark
images. JPEG and WebP draft decoding is off there: the figures are compared with published
ones, made with the official preprocessing, and the vectors are kept (a later run with
another decode would silently reuse them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.catalog import Catalog
from dreamsearch.defaults import PIXEL_METRICS
from dreamsearch.errors import DreamsearchError
from dreamsearch.evaluation.copies import TRANSFORMS, CopyScores, copies_folder, evaluate_copies, make_copies
from dreamsearch.evaluation.nights import Accuracy, NightsRows, evaluate, read_nights, vector_distances
from dreamsearch.evaluation.pixel_metrics import pixel_distances
from dreamsearch.evaluation.retrieval import RetrievalScores, evaluate_retrieval, labels_of
from dreamsearch.indexer import IndexOptions, Progress
from dreamsearch.scan import scan
from dreamsearch.search import Searcher

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.api import Library

#: Told one line at a time: an unreadable image, a missing file, a malformed row.
Problem = Callable[[str], None]


@dataclass(frozen=True)
class Copies:
    """The edited copies of a folder's images, made once: where they are, how many
    originals could be read, and how many edits each got."""

    folder: Path
    originals: int
    edits: int


class Evaluation:
    """Measurements of models over the evaluation library, which ``open_library`` makes
    (``Library.evaluation`` hands it in) when a first picture is to be embedded: a
    mistake found before (a folder that is not NIGHTS) creates nothing. Each call
    measures one model, so a caller can show each model's embedding progress on its own;
    only one model is kept loaded at a time."""

    def __init__(self, open_library: Callable[[], Library]) -> None:
        self._open_library = open_library
        self._library: Library | None = None

    @property
    def evals(self) -> Library:
        if self._library is None:
            self._library = self._open_library()
        return self._library

    def close(self) -> None:
        if self._library is not None:
            self._library.close()

    def __enter__(self) -> Evaluation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def nights_rows(self, folder: Path, split: str) -> NightsRows:
        """The NIGHTS triplets of ``split`` in ``folder`` (data.csv, ref/, distort/) with
        enough votes, and the rows left out."""
        return read_nights(folder, split)

    def nights(
        self,
        folder: Path,
        rows: NightsRows,
        split: str,
        model: str,
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
        problem: Problem,
    ) -> tuple[dict[str, Accuracy], int]:
        """2AFC accuracy per split of ``model`` (or of a pixel metric, ``PIXEL_METRICS``) on
        ``rows``, and how many triplets it skipped (an image missing or unreadable). Only
        the triplets' images are embedded."""
        if not rows.triplets:
            raise DreamsearchError(f"{folder}: no {split} triplets with at least 6 votes")
        if model in PIXEL_METRICS:
            distances = pixel_distances(folder, model, problem)
        else:
            wanted = frozenset(Path(p).as_posix() for t in rows.triplets for p in (t.ref, t.left, t.right))
            self._embed([folder], model, batch_size, progress, problem, wanted)
            vectors = self._vectors(folder, model)
            for relpath in sorted(wanted - vectors.keys()):
                if not (folder / relpath).exists():
                    problem(f"{folder / relpath}: no such file")
            distances = vector_distances(vectors)
        accuracies, missed = evaluate(rows.triplets, distances, split)
        return accuracies, len(missed)

    def retrieval(
        self,
        folder: Path,
        model: str,
        k: int,
        groups: Path | None = None,
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
        problem: Problem,
    ) -> RetrievalScores:
        """Every labelled image of ``folder`` (by sub-folder, or the CSV ``groups``)
        queries the rest (``evaluation.retrieval``)."""
        self._embed([folder], model, batch_size, progress, problem)
        labels = labels_of(folder, list(self._vectors(folder, model)), groups)
        with Searcher(self.evals.layout, model) as searcher:
            return evaluate_retrieval(searcher, folder, labels, k)

    def make_copies(self, folder: Path, problem: Problem) -> Copies:
        """Write the edited copies of ``folder``'s images not made yet (``evaluation.copies``)."""
        out = copies_folder(self.evals.layout.root, folder)
        readable = make_copies([folder / found.relpath for found in scan(folder)], folder, out, problem)
        if not readable:
            raise DreamsearchError(f"{folder}: no readable images")
        return Copies(out, readable, len(TRANSFORMS))

    def copies(
        self,
        folder: Path,
        copies: Copies,
        model: str,
        k: int,
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
        problem: Problem,
    ) -> list[CopyScores]:
        """How often each edit's copy finds its family with ``model``, and at what distances."""
        self._embed([folder, copies.folder], model, batch_size, progress, problem)
        with Searcher(self.evals.layout, model) as searcher:
            return evaluate_copies(searcher, folder, copies.folder, self._vectors(folder, model), k)

    def _embed(
        self,
        folders: Sequence[Path],
        model: str,
        batch_size: int,
        progress: Progress | None,
        problem: Problem,
        only: frozenset[str] | None = None,
    ) -> None:
        """Give every image under ``folders`` (or only the relative paths ``only``) a
        ``model`` vector, then let the model go (the next one may be as large)."""
        options = IndexOptions(batch_size=batch_size, draft=False, only=only)
        report = self.evals.index(folders, [model], options, progress=progress)
        self.evals.unload_models()
        for path, reason in report.failures:
            problem(f"{path}: {reason}")

    def _vectors(self, folder: Path, model: str) -> dict[str, np.ndarray]:
        """``{path relative to folder (posix): unit vector}`` for the images of an embedded folder."""
        with Catalog(self.evals.layout.catalog_path) as catalog:
            info = catalog.model(model)
            wanted = str(Path(folder).resolve())
            root_id = next((rid for rid, path in catalog.roots().items() if path == wanted), None)
            if info is None or root_id is None:
                return {}
            relpaths, vectors = catalog.vectors_under(root_id, info)
        return dict(zip(relpaths, vectors, strict=True))
