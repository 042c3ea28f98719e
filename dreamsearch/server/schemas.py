"""The HTTP API's contract: the document each route answers with, the errors it can give,
and the limits of its inputs. FastAPI checks every answer against these models and
publishes them in ``/openapi.json``; ``tests/server/test_schema.py`` runs Schemathesis
against that schema on a live server, so what the schema says is what the server does.

Errors are always ``{"detail": "one line"}`` (422 included: the server's own handler
answers malformed fields in that shape, not FastAPI's list of problems).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Form, Query
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from dreamsearch.models.registry import get_spec
from dreamsearch.server.files import IMAGE_TYPES as DECODED_TYPES

#: Results per page, and the deepest result a page may reach (offset + k): paging further
#: is a scan, not a search.
MAX_K = 1000
MAX_DEPTH = 10_000
#: Longest path the API takes (Linux's PATH_MAX, terminating NUL included).
MAX_PATH = 4095
#: An absolute path with no ``..`` component and no NUL byte (declared; the routes check it).
_NAME = r"(\.|\.\.[^/\x00]+|\.?[^./\x00][^/\x00]*)"  # a path component other than ".."
ABSOLUTE_PATH = rf"^/+({_NAME}(/+{_NAME})*)?/*$"
#: Image types an original may be served as (anything else: application/octet-stream).
IMAGE_TYPES = tuple(sorted(set(DECODED_TYPES.values())))

#: Longest vector a vector search takes (the largest model, resnet50, has 2048 values).
MAX_DIM = 4096

# Inputs: declared here, so that the schema states them and pydantic answers 422 outside
# them. Paths are only declared, and checked by the routes (400): pydantic cannot match a
# pattern against a name that is not UTF-8 (a lone surrogate), and such names are valid
# (docs/output.md). The body models' fields take these as ``Field(default, **LIMITS)``,
# which mypy cannot read through (``type: ignore[misc]`` there); an ``Annotated`` field
# would change the schema (``ge`` instead of ``minimum``).
_PATH = {"pattern": ABSOLUTE_PATH, "maxLength": MAX_PATH}
K_LIMITS: dict[str, Any] = {"ge": 1, "le": MAX_K, "description": f"Results per page (1-{MAX_K})"}
OFFSET_LIMITS: dict[str, Any] = {
    "ge": 0,
    "le": MAX_DEPTH - 1,
    "description": f"Results to skip; a page ends at result {MAX_DEPTH:,} at the deepest",
}
DISTANCE_LIMITS = {"ge": 0, "le": 2, "description": "Leave out results farther than this (0-2)"}
QueryK = Annotated[int, Query(**K_LIMITS)]
FormK = Annotated[int, Form(**K_LIMITS)]
QueryOffset = Annotated[int, Query(**OFFSET_LIMITS)]
FormOffset = Annotated[int, Form(**OFFSET_LIMITS)]
QueryDistance = Annotated[float | None, Query(**DISTANCE_LIMITS)]
FormDistance = Annotated[float | None, Form(**DISTANCE_LIMITS)]


def _true_or_false(value: object) -> object:
    """A boolean query or form field is the word ``true`` or ``false``, as the schema says
    (pydantic alone also takes 1, 0, yes, no, on, off, t, f, y and n)."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("must be true or false")


def _number_not_text(value: object) -> object:
    """A JSON number field takes numbers only (pydantic alone also takes true, false and
    numeric strings, which the schema's ``number`` and ``integer`` do not)."""
    if isinstance(value, (bool, str)):
        raise ValueError("must be a number")
    return value


JSONInt = Annotated[int, BeforeValidator(_number_not_text)]
JSONFloat = Annotated[float, BeforeValidator(_number_not_text), Field(allow_inf_nan=False)]
QueryBool = Annotated[bool, BeforeValidator(_true_or_false), Query()]
FormBool = Annotated[bool, BeforeValidator(_true_or_false), Form()]
FormUnder = Annotated[
    str | None,
    Form(
        json_schema_extra={"pattern": f"^$|{ABSOLUTE_PATH}", "maxLength": MAX_PATH},
        description="Only results inside this folder (an absolute path)",
    ),
]


class VectorSearch(BaseModel):
    vector: list[JSONFloat] = Field(
        min_length=1,
        max_length=MAX_DIM,
        json_schema_extra={"contains": {"not": {"const": 0}}},
        description="As many numbers as the model's vectors have, not all zero",
    )
    k: JSONInt = Field(25, **K_LIMITS)  # type: ignore[misc]
    model: str | None = None
    offset: JSONInt = Field(0, **OFFSET_LIMITS)  # type: ignore[misc]


#: Longest text a text search takes. CLIP reads 77 tokens, about 300 characters of English:
#: far longer text is a mistake, not a query (and would cost tokenising for nothing).
MAX_TEXT = 2_000


class TextSearch(BaseModel):
    text: str = Field(
        min_length=1,
        max_length=MAX_TEXT,
        pattern=r"\S",
        description="Words to search for. CLIP reads 77 tokens: longer text is cut (see notice)",
    )
    k: JSONInt = Field(25, **K_LIMITS)  # type: ignore[misc]
    model: str | None = Field(None, description="A model with a text tower (default: clip)")
    offset: JSONInt = Field(0, **OFFSET_LIMITS)  # type: ignore[misc]


class IndexRequest(BaseModel):
    folders: list[Annotated[str, Field(json_schema_extra=_PATH)]] = Field(
        min_length=1, description="Absolute folder paths, without '..'"
    )
    models: list[str] | None = Field(None, min_length=1, description="Default: the server's --models")


STATUS_TEXT = {
    400: "Bad request: an unexpected Host header, or a value the route cannot use",
    401: "Missing or wrong bearer token (servers started with --token)",
    403: "Refused: a cross-site Origin, or a folder the server may not index",
    404: "No such file, job or model vectors",
    409: "The library is busy: an index job is running, or the request conflicts with its state",
    413: "Too large: the request body, or the picture's pixel count",
    415: "Not an image: empty, truncated or of an unknown format",
    422: "A field is missing or malformed, or outside its declared limits",
    503: "Busy: too many requests of this kind at once; retry after Retry-After seconds",
}
#: What any /api route can answer before it runs (security.Guard): Host, token, Origin.
GUARD_ERRORS = (400, 401, 403)


class Strict(BaseModel):
    """A document with exactly these fields (``additionalProperties: false``): a field
    added to an answer but not here fails loudly (500, and test_schema.py) instead of
    being dropped or left undocumented."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(Strict):
    detail: str = Field(description="What was wrong, in one line")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a route that can give ``codes`` (plus the guard's)."""
    answers: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*GUARD_ERRORS, *codes}):
        answers[code] = {"model": ErrorBody, "description": STATUS_TEXT[code]}
        if code == 503:
            answers[code]["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
    return answers


def binary(*media_types: str, description: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a 200 that is bytes of one of ``media_types``."""
    schema = {"type": "string", "format": "binary"}
    return {200: {"description": description, "content": {t: {"schema": schema} for t in media_types}}}


def event_stream() -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a 200 that is Server-Sent Events of job documents."""
    return {
        200: {
            "description": "The job document as Server-Sent Events (`data: {...}`), on every change, "
            "until a final state",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }


def library_events() -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of ``/api/events``: Server-Sent Events of ``WatchBatch``."""
    return {
        200: {
            "description": "Each batch the watcher commits (`WatchBatch` as `data: {...}`), as it lands, "
            "and its warnings (`event: warnings`, `data: [...]`) at the start and on each "
            "change; the stream stays open",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }


def model_list_pattern(names: Sequence[str], at_least: int = 1) -> str:
    """A comma-separated list of ``at_least`` or more of ``names``, or blank for the
    default (the compare form field)."""
    one = "(" + "|".join(n.replace("-", r"\-") for n in names) + ")"
    return rf"^ *$|^ *{one}( *, *{one}){{{at_least - 1},}} *$"


def methods_at(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves at the request's path (a 405's ``Allow``)."""
    return sorted(
        {
            method
            for route in routes
            if route.matches(scope)[0] != Match.NONE
            for method in getattr(route, "methods", None) or ()
        }
    )


def publish(app: FastAPI, models: Sequence[str], default: str, token: bool, dims: Callable[[], dict[str, int]]) -> None:
    """Make ``app.openapi()`` FastAPI's schema plus what only this server knows: the model
    names it accepts (``models``, ``default`` when none is named), each indexed model's
    vector length (``dims()``, read on every request of the schema: an index job can add a
    model), and the bearer token when one is required. A query or form field cannot be
    sent as null (leaving it out is how it is left unset), so its null branch goes."""

    def openapi() -> dict[str, Any]:
        document = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
        )
        components = document.get("components", {}).get("schemas", {})
        for operation in (op for item in document["paths"].values() for op in item.values()):
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _field(parameter["name"], _not_null(parameter["schema"]), models, default)
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form:
                body = components[form["schema"]["$ref"].rsplit("/", 1)[-1]]
                body["properties"] = {
                    name: _field(name, _not_null(field), models, default) for name, field in body["properties"].items()
                }
        _describe_vector(components.get("VectorSearch"), models, default, dims())
        if "TextSearch" in components:  # only models with a text tower take text
            components["TextSearch"]["properties"]["model"] = {
                "anyOf": [
                    {"type": "string", "enum": ["", *(m for m in models if get_spec(m).text_builder)]},
                    {"type": "null"},
                ],
                "title": "Model",
                "description": "Empty or null: clip",
            }
        if "IndexRequest" in components:
            for branch in components["IndexRequest"]["properties"]["models"].get("anyOf", []):
                if branch.get("type") == "array":
                    branch["items"] = {"type": "string", "enum": list(models)}
        if token:
            document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for item in document["paths"].values():
                for operation in item.values():
                    operation["security"] = [{"bearer": []}]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, null]`` -> ``X`` (keeping the title, default and description)."""
    branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return branches[0] | rest


def _field(name: str, schema: dict[str, Any], models: Sequence[str], default: str) -> dict[str, Any]:
    if name == "image":  # an upload's bytes
        return {
            "type": "string",
            "format": "binary",
            "title": "Image",
            "description": "A picture file (any format the indexer decodes: JPEG, PNG, WebP, HEIC, ...)",
        }
    if name == "model":
        return {
            "type": "string",
            "enum": ["", *models],
            "default": default,
            "title": "Model",
            "description": f"Empty: the default, {default}",
        }
    if name == "models" and schema.get("type") == "string":  # compare's comma-separated list
        return {
            "type": "string",
            "pattern": model_list_pattern(models, 2),
            "title": "Models",
            "description": "Two or more different models, comma-separated (default: every indexed one)",
        }
    return schema


def _describe_vector(schema: dict[str, Any] | None, models: Sequence[str], default: str, dims: dict[str, int]) -> None:
    """The vector of a vector search has the length of its model's vectors."""
    if schema is None:
        return
    properties = schema["properties"]
    properties["model"] = {
        "anyOf": [{"type": "string", "enum": ["", *models]}, {"type": "null"}],
        "title": "Model",
        "description": f"Empty or null: the default, {default}",
    }
    known = {name: dims[name] for name in models if name in dims}
    if len(set(known.values())) == 1:
        length = next(iter(known.values()))
        properties["vector"] |= {"minItems": length, "maxItems": length}
    elif known:  # one branch per model, and one for the default (no model, "" or null)
        schema["anyOf"] = [
            {"properties": {"model": {"const": name}, "vector": _length(n)}, "required": ["model"]}
            for name, n in known.items()
        ]
        if default in known:
            schema["anyOf"].append(
                {
                    "anyOf": [{"not": {"required": ["model"]}}, {"properties": {"model": {"enum": ["", None]}}}],
                    "properties": {"vector": _length(known[default])},
                }
            )


def _length(n: int) -> dict[str, int]:
    return {"minItems": n, "maxItems": n}


# documents ------------------------------------------------------------------------------


class JobDocument(Strict):
    id: str
    state: Literal["running", "done", "failed", "interrupted"]
    folders: list[str]
    models: list[str]
    counts: dict[str, int]
    error: str | None


class WatchedFolder(Strict):
    path: str
    mode: str = Field(description="How changes are learnt: events (inotify, ...), and/or rescans every N s")
    present: bool


class WatchBatch(Strict):
    seq: int = Field(description="Batches are numbered from 1 in the server's life")
    reason: Literal["catch-up", "changes"]
    folders: list[str]
    added: int
    changed: int
    removed: int
    moved: int
    failed: int
    embedded: int
    kept: int = Field(description="Files gone from disk but kept: their folder looks unmounted")
    seconds: float
    interrupted: bool


class WatchState(Strict):
    state: Literal["starting", "catching up", "watching", "indexing", "waiting for the writer lock", "stopped"]
    folders: list[WatchedFolder]
    pending: int = Field(description="Changed paths settling or waiting for a batch")
    batches: int = Field(description="The last batch's number")
    last_batch: WatchBatch | None
    warnings: list[str] = Field(description="Missing folders, folders that look unmounted, events unavailable")
    version: int


class Health(Strict):
    status: Literal["ok"]
    version: str
    models_loaded: list[str]
    default_model: str
    vectors: dict[str, int] = Field(description="Vectors per indexed model")
    job: JobDocument | None = Field(description="The index job running now, if any")
    watch: WatchState | None = Field(description="The folder watcher's state (`serve --watch`), else null")


class FolderState(Strict):
    path: str
    images: int
    unreadable: int
    missing: bool


class ModelState(Strict):
    name: str
    vectors: int
    dim: int
    index: str = Field(description="The saved index's state, one line")


class FailedFile(Strict):
    path: str
    reason: str
    kind: str | None
    runs: int
    retry: str


class Status(Strict):
    library: str
    size_bytes: int
    folders: list[FolderState]
    models: list[ModelState]
    failed: list[FailedFile] = Field(description="Unreadable files and why (with failed=true)")
    watch_warnings: list[str] = Field(
        description="What the watchers running on this library warn about (`dreamsearch watch`, `serve --watch`)"
    )


class Result(Strict):
    id: int = Field(description="The file's catalog id: stable while it stays indexed at that path")
    rank: int
    distance: float = Field(description="Exact DreamSim distance, 1 - cosine")
    path: str
    size: int
    width: int | None
    height: int | None
    also_at: list[str] = Field(description="Other files with the same bytes")
    links: list[str] = Field(description="Other paths of this same file (hard links, bind mounts)")
    thumbnail: str


class Page(Strict):
    model: str
    results: list[Result]
    next_offset: int | None = Field(description="Where the next page starts; null on the last page")


class TextPage(Page):
    notice: str | None = Field(description="Set when the text was cut to the 77 tokens CLIP reads")


class Embedding(Strict):
    model: str
    dim: int
    vector: list[float] = Field(description="Unit norm")
    fingerprint: str = Field(description="Of the weights that made it: vectors of other weights do not compare")


class Overlap(Strict):
    models: list[str] = Field(min_length=2, max_length=2)
    common: int
    jaccard: float
    rank_correlation: float | None


class Comparison(Strict):
    query: str
    k: int
    models: dict[str, list[Result]]
    overlap: list[Overlap]


class DuplicateFile(Strict):
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    mtime_ns: int
    distance: float = Field(description="Distance to the keeper")
    links: list[str]
    thumbnail: str


class DuplicateGroup(Strict):
    kind: Literal["identical", "similar"]
    keeper: DuplicateFile
    others: list[DuplicateFile]


class DuplicateSummary(Strict):
    identical_groups: int
    similar_groups: int
    removable_files: int
    removable_bytes: int


class Duplicates(Strict):
    model: str
    max_distance: float
    groups: list[DuplicateGroup]
    summary: DuplicateSummary


class FileInfo(Strict):
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    also_at: list[str]
    links: list[str]
    thumbnail: str
    original: str


class JobStarted(Strict):
    job: str = Field(description="The job's id, for GET /api/jobs/{job_id}")
