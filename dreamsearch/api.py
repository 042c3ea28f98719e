"""The Python API for photo apps: one ``Library`` object over a library folder.

Reads (``query``, ``similar_to``) are thread-safe and never block an indexing process;
writes (``index``, ``remove``) take the library's writer lock, one at a time across
processes. Models are loaded once per ``Library`` and kept.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dreamsearch.catalog import Catalog
from dreamsearch.duplicates import DuplicateGroup, find_duplicates
from dreamsearch.images import to_rgb
from dreamsearch.indexer import IndexOptions, IndexReport, Progress, index_folders
from dreamsearch.library import LibraryFolder, library_dir
from dreamsearch.models import PendingModel
from dreamsearch.models.base import Embedder
from dreamsearch.search import Match, Searcher
from dreamsearch.vector_index import save_indexes


class Library:
    """A dreamsearch library. ``Library.open()`` uses ``$DREAMSEARCH_LIBRARY`` or the user
    data folder; use it as a context manager or call ``close()``."""

    def __init__(self, folder: LibraryFolder, weights_dir: str | os.PathLike | None = None, device: str = "auto") -> None:
        self.folder = folder
        self.weights_dir = weights_dir
        self.device = device
        self._models: dict[str, PendingModel] = {}
        self._searchers: dict[str, Searcher] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None,
             device: str = "auto") -> Library:
        """The library at ``path``; nothing is created until the first ``index``."""
        return cls(LibraryFolder(library_dir(path)), weights_dir, device)

    def close(self) -> None:
        with self._lock:
            for searcher in self._searchers.values():
                searcher.close()
            self._searchers.clear()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def model(self, name: str = "dreamsim") -> Embedder:
        """The embedder ``name``, loaded once and shared."""
        return self._model_handle(name).load()

    def _model_handle(self, name: str) -> PendingModel:
        """``name``'s weights, found and checked once; built on first use (``index`` builds
        it only if some file needs embedding)."""
        with self._lock:
            if name not in self._models:
                self._models[name] = PendingModel(name, weights_dir=self.weights_dir, device=self.device)
            return self._models[name]

    def index(self, paths: Sequence[str | os.PathLike], models: Sequence[str] = ("dreamsim",),
              progress: Progress | None = None, **options) -> IndexReport:
        """Index folders (see ``dreamsearch index``); ``options`` are ``IndexOptions`` fields."""
        report = index_folders(LibraryFolder.prepare(self.folder.root), [Path(p) for p in paths],
                               [self._model_handle(m) for m in models], IndexOptions(**options), progress)
        self._forget_searchers()
        return report

    def remove(self, paths: Sequence[str | os.PathLike]) -> int:
        """Forget files (not folders) from the library; returns how many were known."""
        removed = 0
        folder = LibraryFolder.existing(self.folder.root)
        with folder.writer_lock(), Catalog(folder.catalog_path) as catalog:
            for path in paths:
                for root_id, relpath in catalog.locate(Path(path)):
                    removed += catalog.remove_files(root_id, [relpath])
            save_indexes(catalog, self.folder.index_dir)
        self._forget_searchers()
        return removed

    def query(self, image: str | os.PathLike | Image.Image | np.ndarray, k: int = 25, model: str = "dreamsim",
              include_self: bool = False, max_distance: float | None = None) -> list[Match]:
        """The ``k`` most similar indexed images to ``image``: a file path, a PIL image, or an
        ``uint8 [H, W, 3]`` array."""
        searcher, embedder = self._searcher(model), self.model(model)
        own: list[int] = []
        if isinstance(image, (str, os.PathLike)):
            vector, content_id = searcher.embed_file(embedder, Path(image))
            own = [] if content_id is None or include_self else [content_id]
        else:
            picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
            vector = searcher.embed_pixels(embedder, embedder.preprocess(to_rgb(picture)))
        return searcher.search(vector, k, own, max_distance)

    def similar_to(self, path: str | os.PathLike, k: int = 25, model: str = "dreamsim") -> list[Match]:
        """Neighbours of an indexed file, from its stored vector (no model is loaded)."""
        searcher = self._searcher(model)
        vector, content_id = searcher.stored_vector(Path(path))
        return searcher.search(vector, k, [content_id])

    def duplicates(self, model: str = "dreamsim", max_distance: float | None = None) -> list[DuplicateGroup]:
        """Groups of identical files, then of images within ``max_distance`` of each other
        (default: the model's, see docs/duplicates.md), each with a suggested keeper."""
        if max_distance is None:
            max_distance = self.default_duplicate_distance(model)
        searcher = self._searcher(model)
        return find_duplicates(searcher.catalog, searcher.model, searcher.index, max_distance)

    @staticmethod
    def default_duplicate_distance(model: str) -> float:
        from dreamsearch.models.registry import get_spec

        return get_spec(model).duplicate_distance

    def _searcher(self, model: str) -> Searcher:
        """The model's searcher, reopened when the catalog moved on (another process indexed)."""
        with self._lock:
            searcher = self._searchers.get(model)
            if searcher is not None and searcher.catalog.last_seq(searcher.model) != searcher.index.meta.seq:
                searcher.close()
                searcher = None
            if searcher is None:
                searcher = self._searchers[model] = Searcher(self.folder, model)
            return searcher

    def _forget_searchers(self) -> None:
        """After a write, the next read opens the caught-up index."""
        self.close()


__all__ = ["DuplicateGroup", "Library", "Match"]
