"""The HTTP API's test side: the app over a library, and an upload as FastAPI reads it."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from dreamsearch.api import Library
from dreamsearch.server.app import create_app
from dreamsearch.server.security import Settings

MODEL = "dreamsim-dino"


def app_over(lib: Path, weights: Path, **options) -> FastAPI:
    """The app serving the tiny ``MODEL``, allowed to index any folder (``--allow-folder /``):
    for tests about what jobs do, where a pseudo file system must be refused even then."""
    return create_app(
        Library.open(lib, weights_dir=weights, device="cpu"),
        [MODEL],
        Settings(max_body=2_000_000, allow_folders=("/",)),
        **options,
    )


def upload(source: Path | bytes, name: str | None = None) -> dict:
    """The ``files=`` of a request uploading ``source`` (a file, or its bytes) as ``image``,
    named ``name`` (by default the file's own name, or ``query.jpg`` for bytes)."""
    if isinstance(source, Path):
        return {"image": (name or source.name, source.read_bytes(), "application/octet-stream")}
    return {"image": (name or "query.jpg", source, "application/octet-stream")}
