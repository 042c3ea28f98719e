"""The query layer: embed a query, search the model's FAISS index, re-rank exactly from
the stored vectors, and join the catalog so results are real files that are on disk now,
as they were indexed (``Catalog.files_of_contents`` checks each with a stat).

Distances are DreamSim distances, ``1 - cosine``, computed exactly (never the ANN's
approximation). Queries decode exactly as the indexer does (JPEG draft included), so an
indexed file queried by path finds itself at distance ~0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dreamsearch.catalog import Catalog, ModelInfo
from dreamsearch.defaults import DEFAULT_NPROBE
from dreamsearch.duplicates import DuplicateGroup, find_duplicates
from dreamsearch.errors import DreamsearchError, ImageError, NotFoundError, PixelLimitError
from dreamsearch.file_state import one_name_per_file
from dreamsearch.images import (
    DECODE_TIMEOUT_S,
    DEFAULT_MAX_PIXELS,
    Preprocess,
    TimeLimitExceeded,
    decode_bytes,
    time_limit,
    to_rgb,
    too_slow,
)
from dreamsearch.layout import LibraryLayout
from dreamsearch.models.precision import precision_of
from dreamsearch.reading import content_hash, read_file
from dreamsearch.vector_index import open_index

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.clip_text import TextEncoder
    from dreamsearch.models.embedder import Embedder


QueryImage = str | os.PathLike | bytes | Image.Image | np.ndarray
#: A query's results come in stages (``Searcher._ranked``): the first re-ranks 128
#: candidates (128 results, or 32 of IVF-PQ's, which re-ranks 4 per result), each next one
#: 8 times as many. Measured (benchmarks/paging.py, 20k x 768, IVF): page 1 costs 1 ms more
#: than a search just as deep as it needs; a page at offset 100 about the same.
FIRST_STAGE = 128
STAGE_GROWTH = 8
#: Fewest results joined with the catalog (one query, a stat per file) at a time.
MIN_JOIN = 16


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
    """Searches one model's vectors in one library. Reads only: safe while indexing runs.
    Its catalog and index are its own: callers ask it, never them."""

    def __init__(self, layout: LibraryLayout, model: str, nprobe: int = DEFAULT_NPROBE) -> None:
        layout = LibraryLayout.existing(layout.root)  # readers create nothing
        self._catalog = Catalog(layout.catalog_path, read_only=True)
        info = self._catalog.model(model)
        if info is None or self._catalog.count_vectors(info) == 0:
            indexed = ", ".join(self._catalog.model_names()) or "none"
            self._catalog.close()
            raise NotFoundError(  # the model's vectors are what is not there (HTTP: 404)
                f"nothing is indexed with model '{model}' (indexed: {indexed}); "
                f"run `dreamsearch index --model {model} FOLDER` first"
            )
        #: the catalog's record of the model: name, vector length, weights' fingerprint
        self.info: ModelInfo = info
        self.nprobe = nprobe
        self._index = open_index(self._catalog, info, layout.index_dir, nprobe=nprobe)

    def close(self) -> None:
        self._catalog.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_current(self) -> bool:
        """Whether the index still holds every vector of the catalog (no other process
        indexed this model since it was opened)."""
        return self._catalog.last_seq(self.info) == self._index.meta.seq

    def duplicates(self, max_distance: float) -> list[DuplicateGroup]:
        """The library's duplicate groups as this model sees them (``find_duplicates``)."""
        return find_duplicates(self._catalog, self.info, self._index, max_distance)

    def content_of(self, data: bytes | None) -> int | None:
        """The library's content with exactly these bytes, if any (a query that is an
        indexed file is then left out of its own results)."""
        return None if data is None else self._catalog.content_id_of_hash(content_hash(data))

    def embed_pixels(self, embedder: Embedder, pixels: np.ndarray) -> np.ndarray:
        """The query vector of preprocessed pixels, refusing an embedder whose weights differ
        from those that made the library's vectors (distances would be meaningless). A
        library made before whole-file fingerprints holds the legacy fingerprint of the
        same weights until its next ``index`` re-stamps it."""
        self.check_weights(embedder)
        return embedder.embed(pixels[None])[0]

    def check_weights(self, embedder: Embedder | TextEncoder) -> None:
        """Refuse a model (or its text tower) whose weights are not those that made the
        library's vectors."""
        same = self.info.fingerprint in (embedder.fingerprint, getattr(embedder, "legacy_fingerprint", None))
        stored, asked = precision_of(self.info.fingerprint), precision_of(embedder.fingerprint)
        if embedder.name == self.info.name and stored != asked:
            raise DreamsearchError(
                f"the library's '{self.info.name}' vectors are {stored}, not {asked}: query with --precision {stored}"
            )
        if embedder.name != self.info.name or not same:
            raise DreamsearchError(
                f"the library's '{self.info.name}' vectors come from other weights than {embedder.name}"
            )

    def stored_vector(self, path: Path) -> tuple[np.ndarray, int]:
        """The stored vector of an indexed file (``--like``): no model, no decoding. A
        file changed on disk since it was indexed is refused (``ChangedOnDiskError``)."""
        indexed = self._catalog.indexed_file_at(path)
        if indexed is None:
            raise NotFoundError(f"{path} is not in the library (index its folder first, or query it as a file)")
        return self.stored_vector_of(indexed.content_id)

    def stored_vector_of(self, content_id: int) -> tuple[np.ndarray, int]:
        ids, vectors = self._catalog.vectors_for(self.info, [content_id])
        if len(ids) == 0:
            raise NotFoundError(f"that file has no '{self.info.name}' vector (index it with that model)")
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
        outside the folder(s) ``under``: a slice of one list per query (``_ranked``), so
        pages never repeat nor skip a result."""
        if k <= 0:
            raise DreamsearchError("k must be at least 1")
        if offset < 0:
            raise DreamsearchError("offset must be 0 or more")
        if under is not None:  # as written (through a followed symlink) and with links resolved
            folders = [under] if isinstance(under, (str, os.PathLike)) else under
            under = tuple({form for u in folders for form in (Path(os.path.abspath(u)), Path(u).resolve())})
        wanted, excluded, farther = offset + k, set(exclude), False
        matches: list[Match] = []
        scores: list[float] = []
        ids: list[int] = []
        stages = self._ranked(vector)
        while len(matches) < wanted and not farther:
            need = max(wanted - len(matches), MIN_JOIN)  # stat about as many files as the page needs, at once
            while len(ids) < need and (stage := next(stages, None)) is not None:
                scores, ids = scores + stage[0], ids + stage[1]
            if not ids:
                break
            found, farther = self._join(scores[:need], ids[:need], excluded, max_distance, under)
            matches, scores, ids = matches + found, scores[need:], ids[need:]
        return [replace(m, rank=rank) for rank, m in enumerate(matches[offset:wanted], offset + 1)]

    def _ranked(self, vector: np.ndarray) -> Iterator[tuple[list[float], list[int]]]:
        """The one ranked list of contents for ``vector``, best first, in stages of
        ``(scores, content ids)``; every page is a slice of it.

        Why stages of fixed depths: how deep an approximate search goes changes what it
        finds (IVF-PQ re-ranks 4 x depth candidates; at the edge of any search FAISS keeps
        some of several tied results), so pages searched as deep as each needed (offset + k)
        showed some results twice and skipped others (issue 21: runs of identical vectors,
        one photo saved twice with other metadata, repeated a result on most pages). Stage
        ``j`` searches ``FIRST_STAGE * STAGE_GROWTH**j`` candidates deep and adds the best
        results the earlier stages did not give, up to that many in all; ties go by content
        id. The depths depend on the index only, never on the page asked for."""
        query = np.asarray(vector, np.float32)[None]
        given: set[int] = set()
        stored: dict[int, np.ndarray] = {}  # each stage re-ranks from stored vectors: read each once

        def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            missing = [i for i in wanted.tolist() if i not in stored]
            if missing:
                found_ids, found = self._catalog.vectors_for(self.info, missing)
                stored.update(zip(found_ids.tolist(), found, strict=True))
            have = [i for i in wanted.tolist() if i in stored]
            return np.array(have, np.int64), np.array([stored[i] for i in have], np.float32).reshape(-1, self.info.dim)

        depth = max(1, FIRST_STAGE // max(1, self._index.plan.rerank))
        while True:
            scores, ids = self._index.search(query, depth, nprobe=self.nprobe, fetch=fetch)
            last = bool((ids[0] < 0).any()) or depth >= len(self._index)
            fresh = sorted(
                ((-float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and int(i) not in given)
            )
            fresh = fresh if last else fresh[: depth - len(given)]
            given.update(i for _s, i in fresh)
            yield [-s for s, _i in fresh], [i for _s, i in fresh]
            if last:
                return
            depth *= STAGE_GROWTH

    def _join(
        self, scores, ids, exclude: set[int], max_distance, under: tuple[Path, ...] | None
    ) -> tuple[list[Match], bool]:
        """The files of these contents, and whether one was farther than ``max_distance``
        (the list is sorted: none after it is wanted)."""
        keep = [(float(s), int(i)) for s, i in zip(scores, ids, strict=True) if i >= 0 and int(i) not in exclude]
        details = self._catalog.files_of_contents([i for _s, i in keep])
        matches: list[Match] = []
        for score, content_id in keep:
            distance = max(0.0, 1.0 - score)
            if max_distance is not None and distance > max_distance:
                return matches, True
            places = [d for d in details.get(content_id, []) if under is None or _inside(d.path, under)]
            if places:  # no places: removed since the index was read, or outside ``under``
                files = one_name_per_file(places)
                (first, _), links = files[0], tuple(link for _f, names in files for link in names)
                matches.append(
                    Match(
                        0,
                        distance,
                        first.path,
                        first.size,
                        tuple(f.path for f, _names in files[1:]),
                        first.id,
                        first.width,
                        first.height,
                        links,
                    )
                )
        return matches, False


def model_input(
    recipe: Preprocess,
    image: QueryImage,
    name: str = "upload",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> tuple[np.ndarray, bytes | None]:
    """The input, for a model of input ``recipe``, of a picture (a file path, the bytes of
    an image file labelled ``name``, a PIL image or a ``uint8 [H, W, 3]`` array), decoded
    exactly as the indexer decodes (``decode_bytes``; JPEG and WebP at a reduced scale
    unless ``draft`` is False: docs/indexing.md), and the file's bytes when there are any
    (what names its content in the library). Every picture embedded outside an index run
    (queries, ``Library.embed``, ``dreamsearch embed``, ``POST /api/embed``) comes through
    here. The recipe is known before the model is built, so a bad picture is told without
    loading it (nor importing torch). A file over ``max_pixels`` is refused before it is
    decoded (:class:`PixelLimitError`). Files and bytes are read and decoded under the
    decode time limit when called in the main thread (a signal; the server limits its
    worker threads itself); a bad one raises :class:`ImageError` with the reason."""
    if not isinstance(image, (str, os.PathLike, bytes, bytearray)):
        picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        return recipe(to_rgb(picture)), None
    label = str(image) if isinstance(image, (str, os.PathLike)) else name
    try:
        with time_limit(DECODE_TIMEOUT_S):
            if isinstance(image, (bytes, bytearray)):
                return _decoded(recipe, name, bytes(image), max_pixels, draft), bytes(image)
            read = read_file(str(image))
            if read.error:
                raise ImageError(image, read.error)
            return _decoded(recipe, str(image), read.data, max_pixels, draft), read.data
    except TimeLimitExceeded:
        raise ImageError(label, too_slow(DECODE_TIMEOUT_S)) from None


def _decoded(recipe: Preprocess, name: str, data: bytes, max_pixels: int, draft: bool) -> np.ndarray:
    decoded = decode_bytes(name, data, (recipe,), max_pixels, draft)
    if decoded.error:
        raise (PixelLimitError if decoded.too_large else ImageError)(name, decoded.error)
    return decoded.pixels[0]


def _inside(path: str, folders: tuple[Path, ...]) -> bool:
    """Whether ``path``, as stored or with links resolved, lies in one of ``folders``."""
    return any(Path(path).is_relative_to(f) for f in folders) or any(
        Path(path).resolve().is_relative_to(f) for f in folders
    )
