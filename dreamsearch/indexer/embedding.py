"""The run's models: each registered in the catalog (loaded then only if the library has
never seen it), loaded when a file first needs it, and called in their own thread so
Ctrl-C is heard at once. On a CPU each call takes about ``pace.STEP_SECONDS`` of images,
so the first commit comes after one image and a stop waits for one step, not a batch."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.catalog import Catalog, ModelInfo
from dreamsearch.indexer.device_decode import models_cuda_device
from dreamsearch.indexer.options import IndexOptions, ModelSource
from dreamsearch.indexer.outcomes import DecodedContent, EmbeddedContent, Ready
from dreamsearch.indexer.pace import DEFAULT_BATCH, Pace
from dreamsearch.indexer.stream import Workers

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.embedder import Embedder


class RunModels:
    """``sources`` as the run uses them; ``infos``: their catalog records once registered."""

    def __init__(
        self, catalog: Catalog, sources: Sequence[ModelSource], options: IndexOptions, thread: Workers
    ) -> None:
        self.catalog, self.sources, self.options, self.thread = catalog, sources, options, thread
        self.recipes = tuple(s.preprocess_spec for s in sources)
        self.infos: list[ModelInfo] = []
        self._embedders: list[Embedder | None] = [None] * len(sources)
        self._pace = Pace()
        self._paced: bool | None = None  # decided when the first file waits for the model
        self._loading: list[concurrent.futures.Future[Embedder]] = []  # loads started before the first file

    def register(self) -> list[ModelInfo]:
        self.infos = [self._register(i) for i in range(len(self.sources))]
        return self.infos

    def _register(self, i: int) -> ModelInfo:
        """The catalog's record of model ``i``. A model the library already holds with the
        same weights needs no loading; a new one is loaded to learn its vector size. A
        library made before whole-file fingerprints names the same weights by their legacy
        fingerprint: it is re-stamped."""
        source = self.sources[i]
        known = self.catalog.model(source.name)
        if (
            known is not None
            and known.fingerprint != source.fingerprint
            and known.fingerprint == getattr(source, "legacy_fingerprint", None)
        ):
            known = self.catalog.restamp_model(source.name, known.fingerprint, source.fingerprint)
        if known is not None and known.fingerprint == source.fingerprint:
            return known
        dim = known.dim if known is not None else self._new_model_dim(i)
        return self.catalog.ensure_model(source.name, dim, source.fingerprint)  # refuses other weights

    def _new_model_dim(self, i: int) -> int:
        """The vector size of a model the library has never held. A saved graph tells it,
        and the model then compiles in the model thread while the first files are read
        (``clip`` took 0.3-0.9 s of a new library's start on 2 cores); otherwise the model
        is loaded now to learn it."""
        dim = self.sources[i].dim
        if dim is None:
            return self.thread.call(self._load, i).dim
        if self.options.engine != "ray":  # there, Ray's actors load it
            self._loading.append(self.thread.submit(self._load, i))  # a failure is told by the first embedding
        return dim

    def finish_loading(self) -> None:
        """Wait for models still compiling (a run with nothing to embed can end first):
        the interpreter must not exit while OpenVINO compiles in another thread."""
        concurrent.futures.wait(self._loading)

    def embed_lacking(self, good: Sequence[Ready]) -> dict[str, dict[str, np.ndarray]]:
        """Vectors for the decoded files, from each model that has none for their content
        yet: a model added to an indexed folder does not recompute the others. Files
        embedded where they were decoded (Ray) bring their own. The time the models took
        sets the pace of the next step."""
        vectors: dict[str, dict[str, np.ndarray]] = {}
        spent = None
        for i, (source, info) in enumerate(zip(self.sources, self.infos, strict=True)):
            have = self.catalog.hashes_with_vectors([info], [o.content_hash for o in good])
            todo = [o for o in good if o.content_hash not in have]
            found = {o.content_hash: o.vectors[i] for o in todo if isinstance(o, EmbeddedContent)}
            here = [o for o in todo if isinstance(o, DecodedContent)]
            if here:
                pixels = np.stack([o.decoded.pixels[i] for o in here])
                embedded, seconds = self.thread.call(self._embed, i, pixels)
                found.update(zip((o.content_hash for o in here), embedded, strict=True))
                spent = (spent or 0.0) + seconds
            vectors[source.name] = found
        if spent is not None:
            self._pace.took(len(good), spent)
        return vectors

    def _embed(self, i: int, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """In the model thread: the vectors and the seconds the model took (its loading,
        the first time it is needed, not counted)."""
        model = self._load(i)
        started = time.perf_counter()
        return model.embed(pixels), time.perf_counter() - started

    def _load(self, i: int) -> Embedder:
        embedder = self._embedders[i]
        if embedder is None:
            embedder = self._embedders[i] = self.sources[i].load()
        return embedder

    def batch_size(self) -> int:
        """Images per commit: ``batch_size`` if given, else one step."""
        return self.options.batch_size or self.step_size()

    def step_size(self) -> int:
        """Images per model call: on a CPU, about ``pace.STEP_SECONDS`` of them; on CUDA,
        with a compiled network (it serves one batch size) or on Ray, the whole batch."""
        if self._paced is None:
            self._paced = (
                self.options.engine != "ray"
                and not any(getattr(s, "compile", False) for s in self.sources)
                and models_cuda_device(self.sources) is None
            )
        return self._pace.step() if self._paced else self.options.batch_size or DEFAULT_BATCH
