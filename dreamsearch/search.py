"""The query layer: embed a query, search the model's FAISS index, re-rank exactly from
the stored vectors, and join the catalog so results are real files that are on disk now,
as they were indexed (``Catalog.file_details`` checks each with a stat).

Distances are DreamSim distances, ``1 - cosine``, computed exactly (never the ANN's
approximation). Queries decode exactly as the indexer does (JPEG draft included), so an
indexed file queried by path finds itself at distance ~0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamsearch.catalog import Catalog, ModelInfo
from dreamsearch.errors import DreamsearchError, ImageError
from dreamsearch.images import DEFAULT_MAX_PIXELS
from dreamsearch.decoding import DECODE_TIMEOUT_S, TimeLimitExceeded, decode_bytes, time_limit, too_slow
from dreamsearch.reading import read_file
from dreamsearch.library import LibraryFolder
from dreamsearch.models.base import Embedder
from dreamsearch.vector_index import open_index


@dataclass(frozen=True)
class Match:
    """One result. ``also_at`` lists the other places the same content lives."""

    rank: int
    distance: float
    path: str
    size: int
    also_at: tuple[str, ...] = ()


class Searcher:
    """Searches one model's vectors in one library. Reads only: safe while indexing runs."""

    def __init__(self, library: LibraryFolder, model_name: str, nprobe: int = 16) -> None:
        library = LibraryFolder.existing(library.root)  # readers create nothing
        self.library = library
        self.catalog = Catalog(library.catalog_path, read_only=True)
        model = self.catalog.model(model_name)
        if model is None or self.catalog.count_vectors(model) == 0:
            indexed = ", ".join(self.catalog.model_names()) or "none"
            self.catalog.close()
            raise DreamsearchError(
                f"nothing is indexed with model '{model_name}' (indexed: {indexed}); "
                f"run `dreamsearch index --model {model_name} FOLDER` first"
            )
        self.model: ModelInfo = model
        self.nprobe = nprobe
        self.index = open_index(self.catalog, model, library.index_dir, nprobe=nprobe)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed_file(self, embedder: Embedder, path: Path) -> tuple[np.ndarray, int | None]:
        """The query vector of an image file and, if the library holds the same bytes, that
        content's id (to leave the query itself out of its results)."""
        try:
            with time_limit(DECODE_TIMEOUT_S):
                read = read_file(str(path))
                if read.error:
                    raise ImageError(path, read.error)
                decoded = decode_bytes(str(path), read.data, (embedder.preprocess_spec,), DEFAULT_MAX_PIXELS, draft=True)
        except TimeLimitExceeded:
            raise ImageError(path, too_slow(DECODE_TIMEOUT_S)) from None
        if decoded.error:
            raise ImageError(path, decoded.error)
        return self.embed_pixels(embedder, decoded.pixels[0]), self.catalog.content_id_of_hash(read.content_hash)

    def embed_pixels(self, embedder: Embedder, pixels: np.ndarray) -> np.ndarray:
        """The query vector of preprocessed pixels, refusing an embedder whose weights differ
        from those that made the library's vectors (distances would be meaningless)."""
        if embedder.name != self.model.name or embedder.fingerprint != self.model.fingerprint:
            raise DreamsearchError(f"the library's '{self.model.name}' vectors come from other weights than {embedder.name}")
        return embedder.embed(pixels[None])[0]

    def stored_vector(self, path: Path) -> tuple[np.ndarray, int]:
        """The stored vector of an indexed file (``--like``): no model, no decoding."""
        content_id = self.catalog.content_id_at(path)
        if content_id is None:
            raise DreamsearchError(f"{path} is not in the library (index its folder first, or query it as a file)")
        _ids, vectors = self.catalog.vectors_for(self.model, [content_id])
        return vectors[0], content_id

    def search(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[int] = (),
        max_distance: float | None = None,
        under: Path | Sequence[Path] | None = None,
    ) -> list[Match]:
        """The ``k`` nearest files to ``vector`` (exact distances), leaving out contents in
        ``exclude``, farther than ``max_distance``, or outside the folder(s) ``under``."""
        if k <= 0:
            raise DreamsearchError("k must be at least 1")
        k = min(k, max(len(self.index), 1))  # no more results than vectors, whatever was asked
        if under is not None:  # as written (through a followed symlink) and with links resolved
            folders = [under] if isinstance(under, (str, os.PathLike)) else under
            under = tuple({form for u in folders for form in (Path(os.path.abspath(u)), Path(u).resolve())})
        depth = k + len(exclude)
        while True:
            scores, ids = self.index.search(
                np.asarray(vector, np.float32)[None], depth, nprobe=self.nprobe,
                fetch=lambda wanted: self.catalog.vectors_for(self.model, wanted))
            matches = self._join(scores[0], ids[0], set(exclude), max_distance, under)
            exhausted = (ids[0] < 0).any() or depth >= len(self.index)
            if len(matches) >= k or exhausted:
                return [Match(rank, m.distance, m.path, m.size, m.also_at) for rank, m in enumerate(matches[:k], 1)]
            depth *= 4

    def _join(self, scores, ids, exclude: set[int], max_distance, under: tuple[Path, ...] | None) -> list[Match]:
        keep = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0 and int(i) not in exclude]
        paths = self.catalog.paths_of([i for _s, i in keep])
        sizes = self.catalog.content_sizes([i for _s, i in keep])
        matches = []
        for score, content_id in keep:
            distance = max(0.0, 1.0 - score)
            if max_distance is not None and distance > max_distance:
                break  # scores are sorted
            places = [p for p in paths.get(content_id, []) if under is None or _inside(p, under)]
            if places:  # no places: removed since the index was read, or outside ``under``
                matches.append(Match(0, distance, places[0], sizes.get(content_id, 0), tuple(places[1:])))
        return matches


def _inside(path: str, folders: tuple[Path, ...]) -> bool:
    """Whether ``path``, as stored or with links resolved, lies in one of ``folders``."""
    return any(Path(path).is_relative_to(f) for f in folders) or any(
        Path(path).resolve().is_relative_to(f) for f in folders)
