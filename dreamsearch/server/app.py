"""The HTTP API and web UI: each route parses its input, calls ``Library``, and returns
JSON (or a file). Errors are ``{"detail": "..."}`` with the status a client can act on;
bad input never gives a 500.

Work never runs on the event loop: light ``def`` routes run in FastAPI's thread pool, and
heavy work (decoding, embedding, index searches) runs in bounded lanes of its own
(``limits.py``), so light routes answer while heavy ones are saturated, and a search never
waits for an index job (which runs in its own thread).
"""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import fastapi_offline
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from dreamsearch import __version__
from dreamsearch.api import Library, Page
from dreamsearch.documents import comparison_document, duplicates_document, result_document
from dreamsearch.errors import DreamsearchError, ImageError, NotFoundError, PixelLimitError
from dreamsearch.models import text_model_spec
from dreamsearch.models.registry import DEFAULT_TEXT_MODEL, MODELS, get_spec
from dreamsearch.models.weights import weights_dir
from dreamsearch.server import schemas
from dreamsearch.server.files import ORIGINAL_POLICY, FileSent, OpenedFile, open_indexed
from dreamsearch.server.headers import SecurityHeaders
from dreamsearch.server.jobs import FINAL_STATES, JobRunning, Jobs
from dreamsearch.server.limits import Busy, Lane, Limits, TooSlow, answer_busy
from dreamsearch.server.redaction import Redactor, library_redactor
from dreamsearch.server.responses import JSONDocument
from dreamsearch.server.schemas import MAX_DEPTH, MAX_K, IndexRequest, TextSearch, VectorSearch
from dreamsearch.server.security import BodyTooLarge, FolderNotAllowed, Guard, Settings, check_folder_allowed
from dreamsearch.server.thumbnails import (
    DEFAULT_CACHE_BYTES,
    GRID_SIZE,
    REQUESTABLE,
    ThumbnailCache,
    fixed_size,
    thumbnail,
)
from dreamsearch.status import retry_note
from dreamsearch.watcher.loop import Watcher

STATIC = Path(__file__).parent / "static"
#: Swagger UI's script and style, as the fastapi-offline wheel ships them (pinned in pyproject).
SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"
FileId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="The file's catalog id")]


def create_app(
    library: Library,
    models: list[str],
    settings: Settings = Settings(),
    unload_after: float | None = None,
    limits: Limits = Limits(),
    thumbnail_cache: int = DEFAULT_CACHE_BYTES,
    watcher: Watcher | None = None,
) -> FastAPI:
    """The app over ``library``; ``models[0]`` is the default model, and all of them are
    loaded at start-up (and again on first use after ``unload_after`` idle seconds).
    Requests may name only these models, unless ``limits.load_models_on_request``.
    ``watcher`` (``serve --watch``) runs in a thread of its own while the app is up."""
    thumbnails = ThumbnailCache(library.layout.thumbnails_dir, thumbnail_cache)
    redact = library_redactor(library.layout.root, weights_dir(library.weights_dir))
    jobs = Jobs(library, thumbnails.keep_grid, redact.error)  # a job makes the grid's thumbnails as it decodes
    idle = _IdleUnloader(library, unload_after)
    served = {get_spec(name).name for name in models}
    heavy = Lane("decoding", limits.heavy_slots, limits.queue, limits.wait_s, background=True)
    searching = Lane("searching", limits.search_slots, limits.queue, limits.wait_s)

    dims: dict[str, int] = {}  # vector length of each model loaded at start-up

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        dims.update(await asyncio.to_thread(_preload, library, models))
        idle.start()
        following = _follow(watcher)
        yield
        if watcher is not None and following is not None:
            watcher.stop.set()  # a batch in flight commits what is embedded, then the thread ends
            await asyncio.to_thread(following.join)
        idle.stop()
        for lane in (heavy, searching):
            lane.close()
        library.close()

    app = FastAPI(
        title="dreamsearch",
        version=__version__,
        lifespan=lifespan,
        default_response_class=JSONDocument,
        docs_url=None,
        redoc_url=None,  # /docs is served below, from the package
        description="Reverse image search over your photo folders (DreamSim). See docs/serve.md.",
    )
    app.add_middleware(Guard, settings=settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders, cross_origin=bool(settings.cors_origins))  # added last: wraps all
    _error_handlers(app, redact)
    # Starlette types a handler as taking any Exception; this one is only given Busy
    app.add_exception_handler(Busy, answer_busy)  # type: ignore[arg-type]

    def served_model(name: str | None) -> str:
        """The model a request names (default: the first of ``models``), if this server may
        use it: each model loaded takes 0.3-1.7 GB (issue 21: five names took 1.28 -> 4.89 GB).
        A lookup only: a model's idle time (``--unload-after``) counts from the end of its
        last use (``ModelPool.held``), not from here."""
        chosen = name or models[0]
        if not limits.load_models_on_request and get_spec(chosen).name not in served:
            raise DreamsearchError(
                f"model '{chosen}' is not served here (served: {', '.join(models)}); "
                f"start the server with it in --models, or with --load-models-on-request"
            )
        return chosen

    async def upload_work(lane: Lane, image: UploadFile, work):
        """``work(name, data)`` in ``lane`` under the upload time limit. The upload is read
        once a slot is free: until then it waits in its spooled file, not in memory."""

        def run():
            name, data = upload_bytes(image)
            return work(name, data)

        try:
            return await lane.run(run, time_limit=limits.upload_time_limit_s)
        except TooSlow as exc:
            raise ImageError(Path(image.filename or "upload").name, f"decoding and embedding {exc}") from None

    def check_k(k: int, offset: int = 0, max_distance: float | None = None) -> None:
        """The declared limits (schemas.py), for callers that bypass validation."""
        if not 1 <= k <= MAX_K:
            raise DreamsearchError(f"k must be between 1 and {MAX_K}")
        if not 0 <= offset < MAX_DEPTH:
            raise DreamsearchError(f"offset must be between 0 and {MAX_DEPTH - 1}")
        if max_distance is not None and not 0 <= max_distance <= 2:  # NaN fails this too
            raise DreamsearchError("max_distance must be between 0 and 2")

    def upload_bytes(image: UploadFile) -> tuple[str, bytes]:
        image.file.seek(0)
        data = image.file.read(settings.max_body + 1)
        if len(data) > settings.max_body:
            raise BodyTooLarge(f"upload is over the limit of {settings.max_body:,} bytes")
        return Path(image.filename or "upload").name, data

    def page_document(page: Page) -> dict:
        """A page never starts at or past ``MAX_DEPTH``: that one is the last."""
        more = page.next_offset is not None and page.next_offset < MAX_DEPTH
        return {
            "model": page.model,
            "results": [_with_links(result_document(m)) for m in page.matches],
            "next_offset": page.next_offset if more else None,
        }

    @app.get("/api/health", response_model=schemas.Health, responses=schemas.errors())
    def health() -> dict:
        running = jobs.running()
        return {
            "status": "ok",
            "version": __version__,
            "models_loaded": library.loaded_models(),
            "default_model": models[0],
            "vectors": library.vector_counts(),
            "job": None if running is None else running.document(),
            "watch": None if watcher is None else watcher.document(),
        }

    @app.get("/api/status", response_model=schemas.Status, responses=schemas.errors(422))
    def status(failed: schemas.QueryBool = False) -> dict:
        report = library.status(show_failed=failed, verify="quick", thumbnail_bytes=thumbnails.total_bytes())
        return {
            "library": report.library,
            "size_bytes": report.size_bytes,
            "folders": [vars(f) for f in report.folders],
            "models": [vars(m) for m in report.models],
            "failed": [
                {"path": f.path, "reason": f.reason, "kind": f.kind, "runs": f.runs, "retry": retry_note(f)}
                for f in report.failed
            ],
            "watch_warnings": report.watch_warnings,
        }

    @app.post("/api/search", response_model=schemas.Page, responses=schemas.errors(404, 413, 415, 422, 503))
    async def search(
        image: Annotated[UploadFile, File()],
        k: schemas.FormK = 25,
        model: Annotated[str | None, Form()] = None,
        max_distance: schemas.FormDistance = None,
        under: schemas.FormUnder = None,
        offset: schemas.FormOffset = 0,
        include_self: schemas.FormBool = True,
    ) -> dict:
        check_k(k, offset, max_distance)
        folder, chosen = _folder_filter(under), served_model(model)

        def run(name: str, data: bytes) -> Page:
            query = library.query(data, model=chosen, name=name, max_pixels=limits.max_upload_pixels)
            return library.search(
                query, k=k, include_self=include_self, max_distance=max_distance, under=folder, offset=offset
            )

        return page_document(await upload_work(heavy, image, run))

    @app.get("/api/files/{file_id}/similar", response_model=schemas.Page, responses=schemas.errors(404, 422, 503))
    async def similar(
        file_id: FileId,
        k: schemas.QueryK = 25,
        model: str | None = None,
        offset: schemas.QueryOffset = 0,
        max_distance: schemas.QueryDistance = None,
    ) -> dict:
        check_k(k, offset, max_distance)
        chosen = served_model(model)

        def run() -> Page:
            return library.search(
                library.query(like=file_id, model=chosen), k=k, max_distance=max_distance, offset=offset
            )

        return page_document(await searching.run(run))

    @app.post("/api/search/vector", response_model=schemas.Page, responses=schemas.errors(404, 413, 422, 503))
    async def search_vector(body: VectorSearch) -> dict:
        check_k(body.k, body.offset)
        chosen = served_model(body.model)

        def run() -> Page:
            return library.search(
                library.query(vector=body.vector, model=chosen), k=body.k, include_self=True, offset=body.offset
            )

        return page_document(await searching.run(run))

    @app.post("/api/search/text", response_model=schemas.TextPage, responses=schemas.errors(404, 422, 503))
    async def search_text(body: TextSearch) -> dict:
        """Words through the model's text tower (CLIP's), searched in its image vectors."""
        check_k(body.k, body.offset)
        text_model_spec(body.model or DEFAULT_TEXT_MODEL)  # a DreamSim name: 400, naming the models that take text
        try:
            chosen = served_model(body.model or DEFAULT_TEXT_MODEL)
        except DreamsearchError as exc:  # no model that takes text is served: nothing here to answer with
            raise NotFoundError(str(exc)) from None

        def run() -> tuple[tuple[str, ...], Page]:
            query = library.query(text=body.text, model=chosen)
            return query.notes, library.search(query, k=body.k, include_self=True, offset=body.offset)

        notes, page = await heavy.run(run)
        return page_document(page) | {"notice": notes[0] if notes else None}

    @app.post("/api/embed", response_model=schemas.Embedding, responses=schemas.errors(413, 415, 422, 503))
    async def embed(image: Annotated[UploadFile, File()], model: Annotated[str | None, Form()] = None) -> dict:
        chosen = served_model(model)
        vector = await upload_work(
            heavy, image, lambda name, data: library.embed(data, chosen, name=name, max_pixels=limits.max_upload_pixels)
        )
        return {
            "model": chosen,
            "dim": int(vector.shape[0]),
            "vector": [float(x) for x in vector],
            "fingerprint": library.pending_model(chosen).fingerprint,
        }

    @app.post("/api/compare", response_model=schemas.Comparison, responses=schemas.errors(404, 413, 415, 422, 503))
    async def compare(
        image: Annotated[UploadFile, File()],
        models_wanted: Annotated[str | None, Form(alias="models")] = None,
        k: schemas.FormK = 25,
        include_self: schemas.FormBool = True,
    ) -> dict:
        check_k(k)
        names = [served_model(n.strip()) for n in (models_wanted or "").split(",") if n.strip()] or [
            n for n in sorted(library.vector_counts()) if limits.load_models_on_request or n in served
        ]

        def run(name: str, data: bytes):
            # models the server was not started with are let go after the comparison
            return library.compare(
                data,
                list(dict.fromkeys(names)),
                k=k,
                include_self=include_self,
                name=name,
                keep_models={get_spec(n).name for n in names} <= served,
                max_pixels=limits.max_upload_pixels,
            )

        comparison = await upload_work(heavy, image, run)
        document = comparison_document(comparison.query, comparison.k, comparison.results, comparison.overlaps)
        for results in document["models"].values():
            results[:] = [_with_links(r) for r in results]
        return document

    @app.get("/api/duplicates", response_model=schemas.Duplicates, responses=schemas.errors(404, 422, 503))
    async def duplicates(model: str | None = None, max_distance: schemas.QueryDistance = None) -> dict:
        chosen = served_model(model)
        distance = library.default_duplicate_distance(chosen) if max_distance is None else max_distance
        # a scan of the whole index
        groups = await heavy.run(lambda: library.duplicates(chosen, max_distance=distance))
        document = duplicates_document(groups, chosen, distance)
        for group in document["groups"]:
            group["keeper"] = _with_links(group["keeper"])
            group["others"] = [_with_links(f) for f in group["others"]]
        return document

    @app.get("/api/files/{file_id}", response_model=schemas.FileInfo, responses=schemas.errors(404, 422))
    def file_info(file_id: FileId) -> dict:
        detail, copies, links = library.file(file_id)
        return _with_links(
            {
                "id": detail.id,
                "path": detail.path,
                "size": detail.size,
                "width": detail.width,
                "height": detail.height,
                "also_at": list(copies),
                "links": list(links),
            }
        ) | {"original": f"/api/files/{detail.id}/original"}

    @app.get(
        "/api/files/{file_id}/thumbnail",
        response_class=Response,
        responses=schemas.binary("image/jpeg", description="A JPEG fitted in size x size")
        | schemas.errors(404, 422, 503),
    )
    async def file_thumbnail(
        file_id: FileId,
        size: Annotated[
            int, Query(ge=REQUESTABLE.start, le=REQUESTABLE.stop - 1, description="Fits in size x size")
        ] = GRID_SIZE,
    ) -> Response:
        if size not in REQUESTABLE:
            raise DreamsearchError(f"size must be between {REQUESTABLE.start} and {REQUESTABLE.stop - 1}")

        def make() -> bytes:  # in the decoding lane: 64 large originals at once once starved every route
            with _servable(library, file_id) as opened:
                # the next fixed size up (the browser scales it), decoded from the opened file
                return thumbnail(thumbnails, opened.detail, fixed_size(size), opened.read)

        data = await heavy.run(make)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get(
        "/api/files/{file_id}/original",
        response_class=Response,
        responses=schemas.binary(*schemas.IMAGE_TYPES, "application/octet-stream", description="The file's bytes")
        | schemas.errors(404, 422),
    )
    def file_original(file_id: FileId) -> FileSent:
        """The file's bytes, as an image type only if the decoder found one (never from the
        name: a JPEG that is also HTML must not run), else a download; sandboxed either way."""
        return FileSent(
            _servable(library, file_id),
            headers={"Content-Security-Policy": ORIGINAL_POLICY, "Cache-Control": "private, max-age=3600"},
        )

    @app.post(
        "/api/index", status_code=202, response_model=schemas.JobStarted, responses=schemas.errors(404, 409, 413, 422)
    )
    def start_index(body: IndexRequest) -> dict:
        if not body.folders:
            raise DreamsearchError("give at least one folder")
        wanted = [get_spec(served_model(name)).name for name in body.models or models]  # unknown or not served: 400 now
        indexed = library.folders() if library.layout.catalog_path.exists() else []
        for folder in body.folders:
            check_folder_allowed(folder, [*indexed, *settings.allow_folders])
        job = jobs.start(body.folders, wanted)
        return {"job": job.id}

    @app.get("/api/jobs/{job_id}", response_model=schemas.JobDocument, responses=schemas.errors(404, 422))
    def job_state(job_id: str) -> dict:
        return _job(jobs, job_id).document()

    @app.delete(
        "/api/jobs/{job_id}",
        status_code=202,
        response_model=schemas.JobDocument,
        responses={
            200: {"model": schemas.JobDocument, "description": "The job had already ended"},
            **schemas.errors(404, 422),
        },
    )
    def stop_job(job_id: str, response: Response) -> dict:
        """Stop a running job: it commits what is embedded and ends ``interrupted`` (202).
        A job that already ended is left as it is (200)."""
        job = jobs.stop(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        document = job.document()
        if document["state"] in FINAL_STATES:
            response.status_code = 200
        return document

    @app.get(
        "/api/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses=schemas.event_stream() | schemas.errors(404, 422),
    )
    def job_events(job_id: str) -> StreamingResponse:
        job = _job(jobs, job_id)

        async def stream():  # polls on the event loop: an open stream holds no thread
            seen = -1
            while True:
                if job.version != seen:
                    seen = job.version
                    document = job.document()
                    yield f"data: {json.dumps(document)}\n\n"
                    if document["state"] in FINAL_STATES:
                        return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get(
        "/api/events", response_class=StreamingResponse, responses=schemas.library_events() | schemas.errors(404, 422)
    )
    def library_events(after: Annotated[int, Query(ge=0, description="Send batches numbered above this")] = 0):
        """The watcher's committed batches (``serve --watch``), as Server-Sent Events, as
        they land (a client shows "N new photos" and refreshes when asked), and its
        warnings (``event: warnings``) at the start and whenever they change."""
        if watcher is None:
            raise NotFoundError("the server is not watching folders (start it with --watch)")

        async def stream():  # polls on the event loop, as a job's events do: no thread held
            seq, told = after, None
            while True:
                for batch in watcher.batches_after(seq):
                    seq = batch["seq"]
                    yield f"data: {json.dumps(batch)}\n\n"
                warnings = watcher.document()["warnings"]
                if warnings != told:  # first the current ones, then each change
                    told = warnings
                    yield f"event: warnings\ndata: {json.dumps(warnings)}\n\n"
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    app.mount("/docs/assets", StaticFiles(directory=SWAGGER_UI), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    schemas.publish(
        app,
        list(MODELS) if limits.load_models_on_request else models,
        models[0],
        bool(settings.token),
        lambda: dims | library.vector_dims(),
    )
    return app


def _follow(watcher: Watcher | None) -> threading.Thread | None:
    """The watcher's loop in a thread of its own (it blocks in watchfiles' Rust code)."""
    if watcher is None:
        return None
    thread = threading.Thread(target=watcher.run, name="dreamsearch-watch", daemon=True)
    thread.start()
    return thread


def _preload(library: Library, models: list[str]) -> dict[str, int]:
    """Load the models a photo app will ask for, so the first query is warm. A model the
    library has no vectors for is still loaded (``embed`` works without vectors). Returns
    each one's vector length: what the schema says a vector search of it takes."""
    return {name: library.embedder(name).dim for name in models}


def _with_links(document: dict) -> dict:
    return document | {"thumbnail": f"/api/files/{document['id']}/thumbnail"}


def _folder_filter(under: str | None) -> Path | None:
    if not under:
        return None
    if len(under) > schemas.MAX_PATH:
        raise DreamsearchError(f"under: a path of {len(under):,} characters is too long (at most {schemas.MAX_PATH:,})")
    path = Path(under)
    if "\x00" in under or not path.is_absolute() or ".." in path.parts:
        raise DreamsearchError(f"under: {under!r} must be an absolute folder path without '..'")
    return path


def _servable(library: Library, file_id: int) -> OpenedFile:
    """An indexed file opened for sending, judged on what was opened (``files.py``): the
    file indexed there, unchanged, inside an indexed folder as that folder was indexed."""
    detail, _copies, _links = library.file(file_id)
    return open_indexed(detail, library.folders())


def _job(jobs: Jobs, job_id: str):
    job = jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}")
    return job


def _error_handlers(app: FastAPI, redact: Redactor) -> None:
    """Expected failures become ``{"detail": "..."}`` with a status a client can act on,
    naming nothing of the server's own folders (``redaction.py``)."""

    def answer(status: int):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return JSONDocument({"detail": redact.error(exc)}, status_code=status)

        return handler

    # Starlette picks the handler of the most specific class, so the order does not matter.
    for error, status in (
        (NotFoundError, 404),
        (PixelLimitError, 413),
        (ImageError, 415),
        (JobRunning, 409),
        (DreamsearchError, 400),
        (BodyTooLarge, 413),
        (FolderNotAllowed, 403),
    ):
        app.add_exception_handler(error, answer(status))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()
        )
        return JSONDocument({"detail": problems or "invalid request"}, status_code=422)

    @app.exception_handler(HTTPException)  # Starlette's: routing's 404 and 405 too, not only FastAPI's
    async def http_error(request: Request, exc: HTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route that matched it
            headers["Allow"] = ", ".join(schemas.methods_at(app.router.routes, request.scope))
        return JSONDocument({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)


class _IdleUnloader:
    """Frees each model ``seconds`` after its last use ended; a model a request is using
    stays (``Library.unload_models``), and CUDA's cached blocks go back to the driver."""

    def __init__(self, library: Library, seconds: float | None) -> None:
        self.library, self.seconds = library, seconds
        self.done = threading.Event()

    def start(self) -> None:
        if self.seconds:
            threading.Thread(target=self._loop, args=(self.seconds,), name="dreamsearch-unload", daemon=True).start()

    def stop(self) -> None:
        self.done.set()

    def _loop(self, seconds: float) -> None:
        while not self.done.wait(min(seconds, 5.0)):
            self.library.unload_models(idle_for=seconds)
