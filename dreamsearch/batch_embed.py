"""Embed a list of image files with one model, keeping input order and skipping bad files
(``Library.embed_files``, ``dreamsearch embed``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.errors import ImageError
from dreamsearch.images import DEFAULT_MAX_PIXELS
from dreamsearch.search import model_input

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.embedder import Embedder


@dataclass
class EmbeddedFiles:
    """One row per input file, in input order (``vectors[i]`` belongs to ``paths[i]``). A
    file that could not be read has a row of NaN and one ``ImageError`` in ``failures``:
    rows that moved up when a file was skipped made every later row name the wrong file."""

    model: str
    paths: list[Path]
    vectors: np.ndarray
    failures: list[ImageError] = field(default_factory=list)


def embed_files(
    embedder: Embedder,
    paths: list[Path],
    batch_size: int = 16,
    draft: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> EmbeddedFiles:
    """Decode each file as every picture for a model is decoded (``model_input``: JPEG
    draft unless ``draft`` is False), embed in batches, keep order."""
    vectors = np.full((len(paths), embedder.dim), np.nan, dtype=np.float32)
    failures: list[ImageError] = []
    pending: list[tuple[int, np.ndarray]] = []  # (row, model input)

    def flush() -> None:
        rows = [row for row, _ in pending]
        vectors[rows] = embedder.embed(np.stack([pixels for _, pixels in pending]))
        pending.clear()

    for row, path in enumerate(paths):
        try:
            pixels, _data = model_input(embedder.preprocess_spec, path, max_pixels=max_pixels, draft=draft)
        except ImageError as exc:
            failures.append(exc)
            continue
        pending.append((row, pixels))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return EmbeddedFiles(embedder.name, list(paths), vectors, failures)
