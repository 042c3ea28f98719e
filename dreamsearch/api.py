"""The Python API for photo apps, and the one service layer under the CLI and the HTTP
server: one ``Library`` object over a library folder.

Reads (queries, ``status``, ``duplicates``) are thread-safe and never block an indexing
process; writes (``index``, ``remove``, ``forget``) take the library's writer lock, one at
a time across processes. Models are loaded once per ``Library`` and kept (at most
``max_loaded_models``, least recently used let go first; see ``model_pool``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.batch_embed import EmbeddedFiles, embed_files
from dreamsearch.catalog import Catalog, FileDetail
from dreamsearch.catalog.backup import CatalogCopy, backup_catalog, backup_file, restore_catalog
from dreamsearch.compare import Overlap, overlaps
from dreamsearch.defaults import DEFAULT_MAX_PIXELS, DEFAULT_NPROBE
from dreamsearch.display import display_path
from dreamsearch.duplicates import DuplicateGroup
from dreamsearch.errors import ChangedOnDiskError, DreamsearchError, ImageError, NotFoundError
from dreamsearch.file_state import one_name_per_file
from dreamsearch.indexer import IndexOptions, IndexReport, Progress, check_engine, index_folders
from dreamsearch.layout import LibraryLayout, library_dir
from dreamsearch.model_pool import KeyedLocks, ModelPool
from dreamsearch.models import PendingModel, taken_ahead, text_model_spec
from dreamsearch.models.precision import DEFAULT_PRECISION, precision_of
from dreamsearch.models.registry import DEFAULT_MODEL, DEFAULT_TEXT_MODEL, get_spec
from dreamsearch.reading import read_file
from dreamsearch.search import Match, QueryImage, Searcher, model_input
from dreamsearch.status import LibraryStatus, catalog_status
from dreamsearch.vector_index import save_indexes
from dreamsearch.warm import ServedVector, WarmServer

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from dreamsearch.evaluation.eval_library import Evaluation
    from dreamsearch.models.embedder import Embedder
    from dreamsearch.scan import ScannedFile


@dataclass(frozen=True)
class Query:
    """A query vector of one model, where it came from (files, an upload, a vector), and
    the library contents it is of (left out of its results unless asked otherwise)."""

    model: str
    sources: tuple[str, ...]
    vector: np.ndarray
    own: tuple[int, ...] = ()
    #: which of ``sources`` are texts (quoted), not pictures
    texts: tuple[str, ...] = ()
    #: what a person should know about how it was made (a text cut to CLIP's length)
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return " + ".join(self.sources)

    @property
    def pictures(self) -> tuple[str, ...]:
        """The sources that are pictures (what a contact sheet shows as the query)."""
        return tuple(s for s in self.sources if s not in self.texts)

    @classmethod
    def mean(cls, queries: Sequence[Query]) -> Query:
        """One query from several of the same model: the normalised mean of their vectors."""
        mean = np.mean([q.vector for q in queries], axis=0)
        return cls(
            queries[0].model,
            tuple(s for q in queries for s in q.sources),
            mean / np.linalg.norm(mean),
            tuple(i for q in queries for i in q.own),
            tuple(t for q in queries for t in q.texts),
            tuple(n for q in queries for n in q.notes),
        )


@dataclass(frozen=True)
class Page:
    """One page of results; ``next_offset`` is where the next page starts, or None."""

    model: str
    matches: list[Match]
    next_offset: int | None


@dataclass(frozen=True)
class Comparison:
    """The same query through several models, and how much their lists agree."""

    query: str
    k: int
    results: dict[str, list[Match]]
    overlaps: list[Overlap]


def stored_precision(layout: LibraryLayout, model: str) -> str:
    """The precision of the library's ``model`` vectors (``fp32`` when it has none), so
    that a library indexed with ``--precision int8`` goes on with it unasked."""
    if not layout.catalog_path.exists():
        return DEFAULT_PRECISION
    with Catalog(layout.catalog_path, read_only=True) as catalog:
        info = catalog.model(model)
    return DEFAULT_PRECISION if info is None else precision_of(info.fingerprint)


class Library:
    """A dreamsearch library. ``Library.open()`` uses ``$DREAMSEARCH_LIBRARY`` or the user
    data folder; use it as a context manager or call ``close()``."""

    def __init__(
        self,
        layout: LibraryLayout,
        weights_dir: str | os.PathLike | None = None,
        device: str = "auto",
        nprobe: int = DEFAULT_NPROBE,
        max_loaded_models: int | None = None,
        *,
        use_server: bool = False,
        precision: str | None = None,
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        self.layout = layout
        self.precision = precision
        self.use_server = use_server
        self._server: WarmServer | None = None  # found on the first query that embeds
        self.weights_dir = weights_dir
        self.device = device
        self.nprobe = nprobe
        self.compile, self.threads = compile, threads
        self._models = ModelPool(
            lambda name: taken_ahead(
                PendingModel(
                    name,
                    weights_dir=self.weights_dir,
                    device=self.device,
                    precision=self.precision or stored_precision(layout, name),
                    compile=self.compile,
                    threads=self.threads,
                )
            ),
            max_loaded_models,
        )
        self._searchers: dict[str, Searcher] = {}
        self._opening = KeyedLocks()  # one searcher opened at a time per model, never under ``_lock``
        self._catalog: Catalog | None = None  # read-only, opened on first use, shared by threads
        self._lock = threading.Lock()  # guards the two fields above; held only to look up or swap

    @classmethod
    def open(
        cls,
        path: str | os.PathLike | None = None,
        *,
        weights_dir: str | os.PathLike | None = None,
        device: str = "auto",
        nprobe: int = DEFAULT_NPROBE,
        max_loaded_models: int | None = None,
        use_server: bool = False,
        precision: str | None = None,
        compile: bool = False,
        threads: int | None = None,
    ) -> Library:
        """The library at ``path``; nothing is created until the first ``index``. ``nprobe``:
        IVF lists searched per query (more: slower, closer to exhaustive). ``max_loaded_models``:
        models kept loaded at most (default: every model used). ``use_server``: queries from
        picture files are embedded by a running ``dreamsearch serve`` of this library when
        there is one (``dreamsearch.warm``), else here. ``precision``: ``fp32`` or ``int8``
        (``dreamsearch.models.precision``); default: each model's as the library holds it.
        ``compile``: ``torch.compile`` each model as it loads (a one-off 15-60 s, then 10-35%
        faster on a CPU: for long runs). ``threads``: the CPU threads of the models, set as
        the first one loads (so a run that embeds nothing never imports torch)."""
        return cls(
            LibraryLayout(library_dir(path)),
            weights_dir,
            device,
            nprobe,
            max_loaded_models,
            use_server=use_server,
            precision=precision,
            compile=compile,
            threads=threads,
        )

    def close(self) -> None:
        with self._lock:
            for searcher in self._searchers.values():
                searcher.close()
            self._searchers.clear()
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None
            self._server = None  # holds no connection: each request opens its own

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # models -----------------------------------------------------------------------------

    def embedder(self, name: str = DEFAULT_MODEL) -> Embedder:
        """The model ``name``, loaded once and shared."""
        with self._models.use(name) as embedder:
            return embedder

    def loaded_models(self) -> list[str]:
        return self._models.loaded()

    def unload_models(self, *, idle_for: float = 0.0) -> list[str]:
        """Let go of the models unused for ``idle_for`` seconds (the next query loads them
        again); a model a call is using now stays. Returns the names let go."""
        return self._models.unload(idle_for)

    def pending_model(self, name: str) -> PendingModel:
        """The model ``name`` with its weights found and checked, once (a missing file fails
        here, with the usual message); built on first use (``index`` builds it only if some
        file needs embedding)."""
        return self._models.pending(name)

    # writes -----------------------------------------------------------------------------

    def index(
        self,
        paths: Sequence[str | os.PathLike],
        models: Sequence[str] = (DEFAULT_MODEL,),
        options: IndexOptions | None = None,
        *,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        on_picture: Callable[[ScannedFile, Image.Image], None] | None = None,
    ) -> IndexReport:
        """Index folders (see ``dreamsearch index``) with ``options`` (default ``IndexOptions()``).
        Setting ``stop`` ends the run once the model call in flight returns; what is embedded
        is committed (``interrupted``). ``on_picture(file, picture)`` sees each picture
        decoded (``index_folders``). A dry run checks the model names but looks for no
        weights: it only scans."""
        settings = options or IndexOptions()
        check_engine(settings)  # the run's one check: before a folder is created or weights are looked for
        for name in models:
            get_spec(name)  # a typo is told on a dry run too, which finds no weights
        with ExitStack() as held:  # in use for the run: never let go (and loaded again) meanwhile
            pending = [] if settings.dry_run else [held.enter_context(self._models.held(m)) for m in models]
            report = index_folders(
                LibraryLayout.prepare(self.layout.root),
                [Path(p) for p in paths],
                pending,
                settings,
                progress,
                stop,
                on_picture,
            )
        self._forget_searchers()
        return report

    def remove(self, paths: Sequence[str | os.PathLike]) -> int:
        """Forget files (not folders) from the library; returns how many were known."""
        removed = 0
        layout = LibraryLayout.existing(self.layout.root)
        with layout.writer_lock(), Catalog(layout.catalog_path) as catalog:
            for path in paths:
                for root_id, relpath in catalog.locate(Path(path)):
                    removed += catalog.remove_files(root_id, [relpath])
            save_indexes(catalog, layout.index_dir)
        self._forget_searchers()
        return removed

    def forget(self, folder: str | os.PathLike) -> int:
        """Remove an indexed folder (a root) and its files; returns how many files it held."""
        layout = LibraryLayout.existing(self.layout.root)
        wanted = Path(folder).expanduser().resolve()
        with layout.writer_lock(), Catalog(layout.catalog_path) as catalog:
            place = catalog.find_root(wanted)
            if place is None:
                raise DreamsearchError(f"{display_path(wanted)} is not an indexed folder (see `dreamsearch status`)")
            if place.prefix:
                raise DreamsearchError(
                    f"{display_path(wanted)} is part of the indexed folder {display_path(place.path)}; "
                    f"forget that folder, or index it with `--exclude '{place.prefix}*'`"
                )
            removed = catalog.forget_root(place.id)
            save_indexes(catalog, layout.index_dir)
        self._forget_searchers()
        return removed

    def backup(self, dest: str | os.PathLike) -> CatalogCopy:
        """Copy the catalog to ``dest`` (a file, or a folder to hold ``catalog.sqlite``) as
        one consistent snapshot. A reader: an index run goes on meanwhile. Never ``cp`` a
        live catalog instead: commits may still sit in its ``-wal``. The FAISS files are
        rebuilt from the catalog, so they need no backup."""
        return backup_catalog(LibraryLayout.existing(self.layout.root).catalog_path, Path(dest).expanduser())

    def restore(self, backup: str | os.PathLike) -> CatalogCopy:
        """Replace the catalog with ``backup`` (a file written by ``backup``, or the folder it
        was written to) and bring the indexes in line with it. A file that is not an intact
        catalog changes nothing; refused while another process writes. Stale ``-wal`` and
        ``-shm`` files, which SQLite would replay over the restored file, are removed."""
        source = backup_file(Path(backup).expanduser())  # checked before a new library's folder is made
        layout = LibraryLayout.prepare(self.layout.root)
        with layout.writer_lock():
            self.close()  # this object's readers hold the old file open
            restored = restore_catalog(source, layout.catalog_path)
            with Catalog(layout.catalog_path) as catalog:  # the chain check finds indexes from other states
                save_indexes(catalog, layout.index_dir)
        return restored

    # queries ----------------------------------------------------------------------------

    def query(
        self,
        image: QueryImage | None = None,
        *,
        like: str | os.PathLike | int | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        text: str | None = None,
        model: str | None = None,
        name: str = "upload",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Query:
        """A query of ``model`` from exactly one source, for ``search``:

        - ``image``: a picture, embedded: a file path, the bytes of an image file (``name``
          labels it in errors), a PIL image, or a ``uint8 [H, W, 3]`` array; a file of more
          than ``max_pixels`` is refused before it is decoded. A file whose bytes are in the
          library knows its content, so it can be left out of its own results.
        - ``like``: an indexed file, by path or catalog id: its stored vector (no model is
          loaded, nothing is decoded).
        - ``vector``: a vector a caller computed (``embed``): checked and made unit norm.
        - ``text``: words, through the model's own text tower (``clip``: CLIP's, aligned with
          its image vectors; DreamSim has none), built on the first text query. CLIP reads
          77 tokens: a longer text is cut, and the query's ``notes`` say so. Its label is
          the text in double quotes.

        ``model`` defaults to ``DEFAULT_MODEL``, or to ``DEFAULT_TEXT_MODEL`` for a text."""
        given = [
            kind
            for kind, source in (("image", image), ("like", like), ("vector", vector), ("text", text))
            if source is not None
        ]
        if len(given) != 1:
            raise DreamsearchError(
                f"a query takes one of image, like, vector or text (given: {', '.join(given) or 'none'})"
            )
        if text is not None:
            return self._from_text(text, model or DEFAULT_TEXT_MODEL)
        model = model or DEFAULT_MODEL
        if like is not None:
            return self._from_stored(like, model)
        if vector is not None:
            return self._from_vector(vector, model)
        assert image is not None  # the one source given
        return self._from_image(image, model, name, max_pixels)

    def _from_image(self, image: QueryImage, model: str, name: str, max_pixels: int, keep: bool = True) -> Query:
        asked = self._ask_server(image, model)  # it embeds while this process opens the catalog and index
        searcher = self._searcher(model)  # first: "nothing is indexed with it" needs no weights
        if asked is not None:
            served = self._served_query(searcher, *asked, image, model)
            if served is not None:
                return served
        with self._models.held(model, keep) as pending:
            # decoded before the model loads: a file that is not an image is told without torch
            pixels, data = model_input(pending.preprocess_spec, image, name, max_pixels)
            with self._models.use(model, keep) as embedder:
                vector = searcher.embed_pixels(embedder, pixels)
        own = searcher.content_of(data)
        return Query(model, (_label(image, name),), vector, () if own is None else (own,))

    def _ask_server(self, image: QueryImage, model: str) -> tuple[ServedVector, bytes] | None:
        """A running server (``use_server``) embedding the picture file ``image``, and the
        file's bytes; None to embed it here."""
        if not self.use_server or not isinstance(image, (str, os.PathLike)):
            return None
        with self._lock:
            if self._server is None:
                self._server = WarmServer.find(self.layout.serve_socket_path)
                self.use_server = self._server is not None  # looked for once
            server = self._server
        if server is None:
            return None
        read = read_file(str(image))
        if read.error:
            raise ImageError(image, read.error)
        return server.embed(str(image), read.data, model), read.data

    def _served_query(
        self, searcher: Searcher, asked: ServedVector, data: bytes, image: QueryImage, model: str
    ) -> Query | None:
        """The query of the server's vector, or None when it cannot stand in for this
        process: no answer, or its weights did not make the library's vectors."""
        vector = asked.vector(data, searcher.info.fingerprint)
        if vector is None:
            return None
        own = searcher.content_of(data)
        return Query(model, (str(image),), vector, () if own is None else (own,))

    def _from_text(self, text: str, model: str) -> Query:
        from dreamsearch.models.clip_tokenizer import CONTEXT_LENGTH  # ftfy and regex: only text queries need them

        spec = text_model_spec(model)
        if not text.strip():
            raise DreamsearchError("the text is empty: give words to search for")
        searcher = self._text_searcher(spec.name)
        with self._models.held(spec.name) as pending:
            encoder = pending.load_text()
            searcher.check_weights(encoder)
            tokens = encoder.tokenize(text)
            if tokens.empty:
                raise DreamsearchError(
                    "the text is empty once cleaned as CLIP cleans it (only spaces or control characters)"
                )
            vector = encoder.embed([tokens])[0]
        label = f'"{text}"'
        notes = (
            (
                f"{label[:60]}{'…' if len(label) > 60 else ''} was cut to the {CONTEXT_LENGTH} tokens CLIP reads; "
                "the rest is not searched",
            )
            if tokens.cut
            else ()
        )
        return Query(spec.name, (label,), vector, texts=(label,), notes=notes)

    def _text_searcher(self, model: str) -> Searcher:
        """The searcher of ``model``'s vectors, or an error saying how to make them."""
        try:
            return self._searcher(model)
        except NotFoundError:
            if self.vector_counts().get(model):
                raise
            raise NotFoundError(
                f"text search needs the library's '{model}' vectors and it has none: "
                f"index your folders with `dreamsearch index FOLDER -m {model}`"
            ) from None

    def _from_stored(self, file: str | os.PathLike | int, model: str) -> Query:
        searcher = self._searcher(model)
        if isinstance(file, int):
            detail, _copies, _links = self.file(file)
            vector, content_id = searcher.stored_vector_of(detail.content_id)
            return Query(model, (detail.path,), vector, (content_id,))
        vector, content_id = searcher.stored_vector(Path(file))
        return Query(model, (str(file),), vector, (content_id,))

    def _from_vector(self, vector: Sequence[float] | np.ndarray, model: str) -> Query:
        dim = self._searcher(model).info.dim
        given = np.asarray(vector, dtype=np.float64).reshape(-1)
        if given.shape[0] != dim:
            raise DreamsearchError(f"the vector has {given.shape[0]} numbers; model '{model}' needs {dim}")
        largest = np.abs(given).max() if np.isfinite(given).all() else 0.0
        if not largest:
            raise DreamsearchError("the vector must be finite and not all zeros")
        scaled = given / largest  # first: the squares of 1e200s overflow and those of 1e-200s vanish
        unit = scaled / np.linalg.norm(scaled)
        return Query(model, ("vector",), unit.astype(np.float32))

    def search(
        self,
        query: Query,
        *,
        k: int = 25,
        include_self: bool = False,
        max_distance: float | None = None,
        under: str | os.PathLike | None = None,
        offset: int = 0,
    ) -> Page:
        """Results ``offset + 1`` to ``offset + k`` for ``query``; see ``Searcher.search``."""
        searcher = self._searcher(query.model)
        found = searcher.search(
            query.vector,
            k + 1,
            [] if include_self else query.own,
            max_distance,
            None if under is None else Path(under),
            offset,
        )
        more = len(found) > k
        return Page(query.model, found[:k], offset + k if more else None)

    def embed(
        self,
        image: QueryImage,
        model: str = DEFAULT_MODEL,
        *,
        name: str = "upload",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
    ) -> np.ndarray:
        """The unit-norm vector of a picture, decoded as the indexer decodes (``draft=False``:
        JPEG and WebP at full size, the official preprocessing exactly); needs no library
        and no indexed vectors."""
        with self._models.held(model) as pending:
            # decoded before the model loads: a file that is not an image is told without torch
            pixels, _data = model_input(pending.preprocess_spec, image, name, max_pixels, draft)
            with self._models.use(model) as embedder:
                return embedder.embed(pixels[None])[0]

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        model: str = DEFAULT_MODEL,
        *,
        batch_size: int = 16,
        draft: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> EmbeddedFiles:
        """The vectors of image files, one row per path in input order, each decoded as
        ``embed`` decodes and embedded ``batch_size`` at a time. A file that cannot be read
        gets a row of NaN and an entry in ``failures``."""
        with self._models.use(model) as embedder:
            return embed_files(embedder, [Path(p) for p in paths], batch_size, draft, max_pixels)

    def compare(
        self,
        image: QueryImage | None,
        models: Sequence[str],
        *,
        k: int = 25,
        include_self: bool = False,
        name: str = "upload",
        keep_models: bool = True,
        like: str | os.PathLike | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Comparison:
        """``image``, or the indexed file ``like``, through each of ``models`` side by side.
        Every model must be indexed (checked before any is loaded). ``like`` uses each model's
        stored vector of the file (no model load), embedding the file only for a model that
        has none. With ``keep_models=False`` each model loaded here is let go before the next
        loads, so the peak memory is that of the largest; a model that another call is using
        or wants kept stays."""
        if (image is None) == (like is None):
            raise DreamsearchError("compare needs one query: an image, or an indexed file (like)")
        if len(models) < 2:
            raise DreamsearchError("compare needs at least two models")
        for model in models:
            get_spec(model)
        for model in models:
            self._searcher(model)
        source = image if like is None else like
        assert source is not None  # exactly one of the two, checked above
        results = {}
        for model in models:
            query = (
                self._from_image(source, model, name, max_pixels, keep_models)
                if like is None
                else self._like_query(like, model, keep_models)
            )
            results[model] = self.search(query, k=k, include_self=include_self).matches
        return Comparison(_label(source, name), k, results, overlaps(results, k))

    def _like_query(self, file: str | os.PathLike, model: str, keep: bool = True) -> Query:
        """The stored vector of an indexed file, or, for a model that has none (the file was
        indexed without it), the file embedded by that model."""
        try:
            return self._from_stored(file, model)
        except ChangedOnDiskError:
            raise
        except NotFoundError:
            if self._reader().indexed_file_at(Path(file)) is None:
                raise  # not in the library at all
            return self._from_image(file, model, "upload", DEFAULT_MAX_PIXELS, keep)

    def duplicates(self, model: str = DEFAULT_MODEL, *, max_distance: float | None = None) -> list[DuplicateGroup]:
        """Groups of identical files, then of images within ``max_distance`` of each other
        (default: the model's, see docs/duplicates.md), each with a suggested keeper."""
        if max_distance is None:
            max_distance = self.default_duplicate_distance(model)
        return self._searcher(model).duplicates(max_distance)

    @staticmethod
    def default_duplicate_distance(model: str) -> float:
        return get_spec(model).duplicate_distance

    # measurements -----------------------------------------------------------------------

    def evaluation(self) -> Evaluation:
        """``dreamsearch eval``'s measurements (NIGHTS, retrieval, copies), over a library of
        their own inside this one (``<library>/eval``, made when a first picture is to be
        embedded): their pictures are embedded once and kept, and never show up in this
        library's results. Close it (or use it as a context manager) when done."""
        from dreamsearch.evaluation.eval_library import Evaluation

        return Evaluation(self._evaluation_library)

    def _evaluation_library(self) -> Library:
        LibraryLayout.prepare(self.layout.root)  # first: a bare parent folder would not be a library
        return Library(
            LibraryLayout.prepare(self.layout.eval_dir),
            self.weights_dir,
            self.device,
            self.nprobe,
            precision=self.precision,
            compile=self.compile,
            threads=self.threads,
        )

    # the library itself -----------------------------------------------------------------

    def file(self, file_id: int) -> tuple[FileDetail, tuple[str, ...], tuple[str, ...]]:
        """An indexed file by catalog id, if it is on disk now as it was indexed; the other
        files with the same content; and the other paths of this same file on disk (hard
        links, a bind mount, a followed symlink), which are not copies."""
        catalog = self._reader()
        detail = catalog.file_detail(file_id)
        if detail is None:
            raise NotFoundError(f"no indexed file has id {file_id} (or it changed on disk since it was indexed)")
        same = catalog.files_of_contents([detail.content_id]).get(detail.content_id, [])
        copies = tuple(d.path for d, _names in one_name_per_file(same) if d.file_key != detail.file_key)
        links = tuple(d.path for d in same if d.file_key == detail.file_key and d.id != detail.id)
        return detail, copies, links

    def folders(self) -> list[str]:
        """The indexed folders (roots), as stored."""
        return list(self._reader().roots().values())

    def status(
        self, *, show_failed: bool = False, verify: str = "full", thumbnail_bytes: int | None = None
    ) -> LibraryStatus:
        """Folders, counts per model, the state of each saved index, and unreadable files
        (``verify`` and ``thumbnail_bytes``: see :func:`dreamsearch.status.catalog_status`)."""
        return catalog_status(self.layout, self._reader(), show_failed, verify, thumbnail_bytes)

    def vector_counts(self) -> dict[str, int]:
        """Vectors per model (what ``/api/health`` reports)."""
        if not self.layout.catalog_path.exists():
            return {}
        catalog = self._reader()
        return {info.name: catalog.count_vectors(info) for info in catalog.models()}

    def vector_dims(self) -> dict[str, int]:
        """Each indexed model's vector length (what ``/api/search/vector`` accepts)."""
        if not self.layout.catalog_path.exists():
            return {}
        catalog = self._reader()
        return {info.name: info.dim for info in catalog.models()}

    def _reader(self) -> Catalog:
        """The library's catalog, read-only, opened once (each opening checks the schema:
        ~10 ms that a by-id request should not pay). It sees every commit as it lands."""
        with self._lock:
            if self._catalog is None:
                self._catalog = Catalog(LibraryLayout.existing(self.layout.root).catalog_path, read_only=True)
            return self._catalog

    def _searcher(self, model: str) -> Searcher:
        """The model's searcher, reopened when the catalog moved on (another process
        indexed). A replaced searcher is not closed here: a thread may still be reading
        from it; it closes when the last reference goes. The name is checked first, so a
        typo is told as such (with a suggestion) before anything is opened."""
        get_spec(model)
        with self._lock:
            searcher = self._searchers.get(model)
        if searcher is not None and searcher.is_current():
            return searcher  # the common case: checked without holding the lock
        with self._opening(model):  # opening a large index takes seconds: other models' readers go on
            with self._lock:
                current = self._searchers.get(model)
            if current is None or current is searcher:  # stale or dropped, and not yet replaced
                current = Searcher(self.layout, model, self.nprobe)
                with self._lock:
                    self._searchers[model] = current
            return current

    def _forget_searchers(self) -> None:
        """After a write, the next read opens the caught-up index."""
        with self._lock:
            self._searchers.clear()


def _label(image: QueryImage, name: str) -> str:
    """How a query picture is named in results: its path, or ``name`` for pixels and bytes."""
    return str(image) if isinstance(image, (str, os.PathLike)) else name


__all__ = [
    "Comparison",
    "DuplicateGroup",
    "EmbeddedFiles",
    "IndexOptions",
    "IndexReport",
    "Library",
    "Match",
    "Page",
    "Query",
]
