"""Embeddings of an evaluation folder, computed once and kept.

Evaluation images are indexed into a library of their own (``<library>/eval``), so a re-run
only checks file sizes and dates, and the user's search library never returns benchmark
images. JPEG draft decoding is off: evaluation promises the exact official preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.catalog import Catalog
from dreamsearch.indexer import IndexOptions, IndexReport, Progress, index_folders
from dreamsearch.layout import LibraryLayout

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.embedder import Embedder


def eval_library(library: LibraryLayout) -> LibraryLayout:
    return LibraryLayout.prepare(library.root / "eval")


def embed_folders(
    library: LibraryLayout,
    folders: Sequence[Path],
    embedder: Embedder,
    batch_size: int = 32,
    only: frozenset[str] | None = None,
    progress: Progress | None = None,
) -> IndexReport:
    """Make sure every image under ``folders`` (or only the relative paths ``only``) has an
    ``embedder`` vector in the eval library."""
    options = IndexOptions(batch_size=batch_size, draft=False, only=only)
    return index_folders(eval_library(library), [Path(f) for f in folders], [embedder], options, progress)


def folder_vectors(library: LibraryLayout, folder: Path, model: str) -> dict[str, np.ndarray]:
    """``{path relative to folder (posix): unit vector}`` for the images of an embedded folder."""
    with Catalog(eval_library(library).catalog_path) as catalog:
        info = catalog.model(model)
        wanted = str(Path(folder).resolve())
        root_id = next((rid for rid, path in catalog.roots().items() if path == wanted), None)
        if info is None or root_id is None:
            return {}
        relpaths, vectors = catalog.vectors_under(root_id, info)
    return dict(zip(relpaths, vectors, strict=True))
