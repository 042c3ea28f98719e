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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from dreamsearch.catalog import Catalog, ModelInfo
from dreamsearch.errors import DreamsearchError, ImageError, NotFoundError, PixelLimitError
from dreamsearch.file_state import one_name_per_file
from dreamsearch.images import DEFAULT_MAX_PIXELS, to_rgb
from dreamsearch.decoding import DECODE_TIMEOUT_S, TimeLimitExceeded, decode_bytes, time_limit, too_slow
from dreamsearch.reading import content_hash, read_file
from dreamsearch.layout import LibraryLayout
from dreamsearch.models.base import Embedder
from dreamsearch.vector_index import open_index
from dreamsearch.vector_index.policy import DEFAULT_NPROBE


QueryImage = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class Match:
    """One result. ``also_at`` lists the other files with the same content, ``links`` the
    other paths of those same files on disk (hard links, a bind mount, a followed
    symlink: not copies); ``id`` is the catalog id of the file at ``path`` (what the HTTP
    API serves files by)."""

    rank: int
    distance: float
    path: str
    size: int
    also_at: tuple[str, ...] = ()
    id: int = 0
    width: int | None = None
    height: int | None = None
    links: tuple[str, ...] = ()


class Searcher:
    """Searches one model's vectors in one library. Reads only: safe while indexing runs."""

    def __init__(self, library: LibraryLayout, model_name: str, nprobe: int = DEFAULT_NPROBE) -> None:
        library = LibraryLayout.existing(library.root)  # readers create nothing
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

    def content_of(self, data: bytes | None) -> int | None:
        """The library's content with exactly these bytes, if any (a query that is an
        indexed file is then left out of its own results)."""
        return None if data is None else self.catalog.content_id_of_hash(content_hash(data))

    def embed_pixels(self, embedder: Embedder, pixels: np.ndarray) -> np.ndarray:
        """The query vector of preprocessed pixels, refusing an embedder whose weights differ
        from those that made the library's vectors (distances would be meaningless). A
        library made before whole-file fingerprints holds the legacy fingerprint of the
        same weights until its next ``index`` re-stamps it."""
        same = self.model.fingerprint in (embedder.fingerprint, getattr(embedder, "legacy_fingerprint", None))
        if embedder.name != self.model.name or not same:
            raise DreamsearchError(f"the library's '{self.model.name}' vectors come from other weights than {embedder.name}")
        return embedder.embed(pixels[None])[0]

    def stored_vector(self, path: Path) -> tuple[np.ndarray, int]:
        """The stored vector of an indexed file (``--like``): no model, no decoding. A
        file changed on disk since it was indexed is refused (``ChangedOnDiskError``)."""
        indexed = self.catalog.indexed_file_at(path)
        if indexed is None:
            raise NotFoundError(f"{path} is not in the library (index its folder first, or query it as a file)")
        return self.stored_vector_of(indexed.content_id)

    def stored_vector_of(self, content_id: int) -> tuple[np.ndarray, int]:
        ids, vectors = self.catalog.vectors_for(self.model, [content_id])
        if len(ids) == 0:
            raise NotFoundError(f"that file has no '{self.model.name}' vector (index it with that model)")
        return vectors[0], content_id

    def search(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[int] = (),
        max_distance: float | None = None,
        under: Path | Sequence[Path] | None = None,
        offset: int = 0,
    ) -> list[Match]:
        """The ``k`` nearest files to ``vector`` after the first ``offset`` (exact
        distances), leaving out contents in ``exclude``, farther than ``max_distance``, or
        outside the folder(s) ``under``."""
        if k <= 0:
            raise DreamsearchError("k must be at least 1")
        if offset < 0:
            raise DreamsearchError("offset must be 0 or more")
        wanted = min(offset + k, max(len(self.index), 1))  # no more results than vectors, whatever was asked
        if under is not None:  # as written (through a followed symlink) and with links resolved
            folders = [under] if isinstance(under, (str, os.PathLike)) else under
            under = tuple({form for u in folders for form in (Path(os.path.abspath(u)), Path(u).resolve())})
        depth = wanted + len(exclude)
        while True:
            scores, ids = self.index.search(
                np.asarray(vector, np.float32)[None], depth, nprobe=self.nprobe,
                fetch=lambda wanted: self.catalog.vectors_for(self.model, wanted))
            matches = self._join(scores[0], ids[0], set(exclude), max_distance, under)
            exhausted = (ids[0] < 0).any() or depth >= len(self.index)
            if len(matches) >= wanted or exhausted:
                return [replace(m, rank=rank) for rank, m in enumerate(matches[offset:wanted], offset + 1)]
            depth *= 4

    def _join(self, scores, ids, exclude: set[int], max_distance, under: tuple[Path, ...] | None) -> list[Match]:
        keep = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0 and int(i) not in exclude]
        details = self.catalog.file_details([i for _s, i in keep])
        matches = []
        for score, content_id in keep:
            distance = max(0.0, 1.0 - score)
            if max_distance is not None and distance > max_distance:
                break  # scores are sorted
            places = [d for d in details.get(content_id, []) if under is None or _inside(d.path, under)]
            if places:  # no places: removed since the index was read, or outside ``under``
                files = one_name_per_file(places)
                (first, _), links = files[0], tuple(link for _f, names in files for link in names)
                matches.append(Match(0, distance, first.path, first.size, tuple(f.path for f, _names in files[1:]),
                                     first.id, first.width, first.height, links))
        return matches


def model_input(embedder: Embedder, image: QueryImage, name: str = "upload") -> tuple[np.ndarray, bytes | None]:
    """The model input of a picture (a file path, the bytes of an image file labelled
    ``name``, a PIL image or a ``uint8 [H, W, 3]`` array), decoded exactly as the indexer
    decodes (JPEG draft included), and the file's bytes when there are any (what names its
    content in the library). A file is read and decoded under the decode time limit; a bad
    one raises :class:`ImageError` with the reason."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with time_limit(DECODE_TIMEOUT_S):
                read = read_file(str(image))
                if read.error:
                    raise ImageError(image, read.error)
                return _decoded(embedder, str(image), read.data), read.data
        except TimeLimitExceeded:
            raise ImageError(image, too_slow(DECODE_TIMEOUT_S)) from None
    if isinstance(image, (bytes, bytearray)):
        return _decoded(embedder, name, bytes(image)), bytes(image)
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return embedder.preprocess(to_rgb(picture)), None


def _decoded(embedder: Embedder, name: str, data: bytes) -> np.ndarray:
    decoded = decode_bytes(name, data, (embedder.preprocess_spec,), DEFAULT_MAX_PIXELS, draft=True)
    if decoded.error:
        raise (PixelLimitError if decoded.too_large else ImageError)(name, decoded.error)
    return decoded.pixels[0]


def _inside(path: str, folders: tuple[Path, ...]) -> bool:
    """Whether ``path``, as stored or with links resolved, lies in one of ``folders``."""
    return any(Path(path).is_relative_to(f) for f in folders) or any(
        Path(path).resolve().is_relative_to(f) for f in folders)
