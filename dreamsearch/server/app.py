"""The HTTP API and web UI: each route parses its input, calls ``Library``, and returns
JSON (or a file). Errors are ``{"detail": "..."}`` with the status a client can act on;
bad input never gives a 500.

Work never runs on the event loop: ``def`` routes run in FastAPI's thread pool, and the
``async`` ones (uploads) hand their decoding and embedding to a thread, so a search never
waits for another, nor for an index job (which runs in its own thread).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from dreamsearch import __version__
from dreamsearch.api import Library, Page
from dreamsearch.documents import comparison_document, duplicates_document, result_document
from dreamsearch.errors import DreamsearchError, ImageError, NotFoundError, PixelLimitError
from dreamsearch.models.registry import get_spec
from dreamsearch.server.jobs import FINAL_STATES, JobRunning, Jobs
from dreamsearch.server.security import BodyTooLarge, Guard, Settings
from dreamsearch.server.thumbnails import SIZES, thumbnail
from dreamsearch.status import retry_note

STATIC = Path(__file__).parent / "static"
MAX_K = 1000
#: Deepest result a page may reach (offset + k): paging further is a scan, not a search.
MAX_DEPTH = 10_000
FileId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="The file's catalog id")]


class VectorSearch(BaseModel):
    vector: list[float]
    k: int = 25
    model: str | None = None
    offset: int = 0


class IndexRequest(BaseModel):
    folders: list[str]
    models: list[str] | None = None


def create_app(library: Library, models: list[str], settings: Settings = Settings(),
               unload_after: float | None = None) -> FastAPI:
    """The app over ``library``; ``models[0]`` is the default model, and all of them are
    loaded at start-up (and again on first use after ``unload_after`` idle seconds)."""
    jobs = Jobs(library)
    idle = _IdleUnloader(library, unload_after)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(_preload, library, models)
        idle.start()
        yield
        idle.stop()
        library.close()

    app = FastAPI(title="dreamsearch", version=__version__, lifespan=lifespan,
                  description="Reverse image search over your photo folders (DreamSim). See docs/serve.md.")
    app.add_middleware(Guard, settings=settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    _error_handlers(app)

    def model_of(name: str | None) -> str:
        idle.touch()
        return name or models[0]

    def check_k(k: int, offset: int = 0, max_distance: float | None = None) -> None:
        if not 1 <= k <= MAX_K:
            raise DreamsearchError(f"k must be between 1 and {MAX_K}")
        if not 0 <= offset <= MAX_DEPTH - k:
            raise DreamsearchError(f"offset must be between 0 and {MAX_DEPTH} - k")
        if max_distance is not None and not 0 <= max_distance <= 2:  # NaN fails this too
            raise DreamsearchError("max_distance must be between 0 and 2")

    async def upload_bytes(image: UploadFile) -> tuple[str, bytes]:
        data = await image.read(settings.max_body + 1)
        if len(data) > settings.max_body:
            raise BodyTooLarge(f"upload is over the limit of {settings.max_body:,} bytes")
        return Path(image.filename or "upload").name, data

    def page_document(page: Page) -> dict:
        return {"model": page.model, "results": [_with_links(result_document(m)) for m in page.matches],
                "next_offset": page.next_offset}

    @app.get("/api/health")
    def health() -> dict:
        running = jobs.running()
        return {"status": "ok", "version": __version__, "models_loaded": library.loaded_models(),
                "default_model": models[0], "vectors": library.vector_counts(),
                "job": None if running is None else running.document()}

    @app.get("/api/status")
    def status(failed: bool = False) -> dict:
        report = library.status(failed)
        return {"library": report.library, "size_bytes": report.size_bytes,
                "folders": [vars(f) for f in report.folders], "models": [vars(m) for m in report.models],
                "failed": [{"path": f.path, "reason": f.reason, "kind": f.kind, "runs": f.runs, "retry": retry_note(f)}
                           for f in report.failed]}

    @app.post("/api/search")
    async def search(image: Annotated[UploadFile, File()], k: Annotated[int, Form()] = 25,
                     model: Annotated[str | None, Form()] = None, max_distance: Annotated[float | None, Form()] = None,
                     under: Annotated[str | None, Form()] = None, offset: Annotated[int, Form()] = 0,
                     include_self: Annotated[bool, Form()] = True) -> dict:
        check_k(k, offset, max_distance)
        name, data = await upload_bytes(image)
        folder = _folder_filter(under)

        def run() -> Page:
            query = library.image_query(data, model_of(model), name)
            return library.search(query, k, include_self, max_distance, folder, offset)

        return page_document(await asyncio.to_thread(run))

    @app.get("/api/files/{file_id}/similar")
    def similar(file_id: FileId, k: int = 25, model: str | None = None, offset: int = 0,
                max_distance: float | None = None) -> dict:
        check_k(k, offset, max_distance)
        query = library.stored_query(file_id, model_of(model))
        return page_document(library.search(query, k, False, max_distance, None, offset))

    @app.post("/api/search/vector")
    def search_vector(body: VectorSearch) -> dict:
        check_k(body.k, body.offset)
        query = library.vector_query(body.vector, model_of(body.model))
        return page_document(library.search(query, body.k, True, None, None, body.offset))

    @app.post("/api/embed")
    async def embed(image: Annotated[UploadFile, File()], model: Annotated[str | None, Form()] = None) -> dict:
        name, data = await upload_bytes(image)
        chosen = model_of(model)
        vector = await asyncio.to_thread(library.embed, data, chosen, name)
        return {"model": chosen, "dim": int(vector.shape[0]), "vector": [float(x) for x in vector]}

    @app.post("/api/compare")
    async def compare(image: Annotated[UploadFile, File()], models_wanted: Annotated[str | None, Form(alias="models")] = None,
                      k: Annotated[int, Form()] = 25, include_self: Annotated[bool, Form()] = True) -> dict:
        check_k(k)
        name, data = await upload_bytes(image)
        idle.touch()

        def run():
            names = [n.strip() for n in (models_wanted or "").split(",") if n.strip()] or sorted(library.vector_counts())
            # models the server was not started with are let go after the comparison
            return library.compare(data, list(dict.fromkeys(names)), k, include_self, name,
                                   keep_models=set(names) <= set(models))

        comparison = await asyncio.to_thread(run)
        document = comparison_document(comparison.query, comparison.k, comparison.results, comparison.overlaps)
        for results in document["models"].values():
            results[:] = [_with_links(r) for r in results]
        return document

    @app.get("/api/duplicates")
    def duplicates(model: str | None = None, max_distance: Annotated[float | None, Query(ge=0, le=2)] = None) -> dict:
        chosen = model_of(model)
        distance = library.default_duplicate_distance(chosen) if max_distance is None else max_distance
        document = duplicates_document(library.duplicates(chosen, distance), chosen, distance)
        for group in document["groups"]:
            group["keeper"] = _with_links(group["keeper"])
            group["others"] = [_with_links(f) for f in group["others"]]
        return document

    @app.get("/api/files/{file_id}")
    def file_info(file_id: FileId) -> dict:
        detail, copies, links = library.file(file_id)
        return _with_links({"id": detail.id, "path": detail.path, "size": detail.size, "width": detail.width,
                            "height": detail.height, "also_at": list(copies), "links": list(links)}) | {
            "original": f"/api/files/{detail.id}/original"}

    @app.get("/api/files/{file_id}/thumbnail")
    def file_thumbnail(file_id: FileId, size: int = 256) -> Response:
        if size not in SIZES:
            raise DreamsearchError(f"size must be between {SIZES.start} and {SIZES.stop - 1}")
        detail = _servable(library, file_id)
        data = thumbnail(library.folder.root / "thumbnails", detail, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/files/{file_id}/original")
    def file_original(file_id: FileId) -> FileResponse:
        detail = _servable(library, file_id)
        return FileResponse(detail.path, filename=Path(detail.path).name, content_disposition_type="inline")

    @app.post("/api/index", status_code=202)
    def start_index(body: IndexRequest) -> dict:
        if not body.folders:
            raise DreamsearchError("give at least one folder")
        wanted = [get_spec(name).name for name in body.models or models]  # unknown names: 400 now
        job = jobs.start(body.folders, wanted)
        return {"job": job.id}

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str) -> dict:
        return _job(jobs, job_id).document()

    @app.get("/api/jobs/{job_id}/events")
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

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _preload(library: Library, models: list[str]) -> None:
    """Load the models a photo app will ask for, so the first query is warm. A model the
    library has no vectors for is still loaded (``embed`` works without vectors)."""
    for name in models:
        library.model(name)


def _with_links(document: dict) -> dict:
    return document | {"thumbnail": f"/api/files/{document['id']}/thumbnail"}


def _folder_filter(under: str | None) -> Path | None:
    if not under:
        return None
    path = Path(under)
    if "\x00" in under or not path.is_absolute() or ".." in path.parts:
        raise DreamsearchError(f"under: {under!r} must be an absolute folder path without '..'")
    return path


def _servable(library: Library, file_id: int):
    """An indexed file that may be sent: on disk as indexed, and inside an indexed folder
    once links are resolved (a photo swapped for a symlink to elsewhere is refused)."""
    detail, _copies, _links = library.file(file_id)
    real = Path(detail.path).resolve()
    roots = [Path(root).resolve() for root in library.folders()]
    if not any(real.is_relative_to(root) for root in roots):
        raise NotFoundError(f"file {file_id} now points outside the indexed folders")
    return detail


def _job(jobs: Jobs, job_id: str):
    job = jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}")
    return job


def _error_handlers(app: FastAPI) -> None:
    """Expected failures become ``{"detail": "..."}`` with a status a client can act on."""

    def answer(status: int):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)
        return handler

    # Starlette picks the handler of the most specific class, so the order does not matter.
    for error, status in ((NotFoundError, 404), (PixelLimitError, 413), (ImageError, 415), (JobRunning, 409),
                          (DreamsearchError, 400), (BodyTooLarge, 413)):
        app.add_exception_handler(error, answer(status))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": problems or "invalid request"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code)


class _IdleUnloader:
    """Frees the models after ``seconds`` without a request that needs one."""

    def __init__(self, library: Library, seconds: float | None) -> None:
        self.library, self.seconds = library, seconds
        self.last = time.monotonic()
        self.done = threading.Event()

    def touch(self) -> None:
        self.last = time.monotonic()

    def start(self) -> None:
        if self.seconds:
            threading.Thread(target=self._loop, name="dreamsearch-unload", daemon=True).start()

    def stop(self) -> None:
        self.done.set()

    def _loop(self) -> None:
        while not self.done.wait(min(self.seconds, 5.0)):
            if time.monotonic() - self.last >= self.seconds and self.library.loaded_models():
                self.library.unload_models()
