"""Embed a list of image files with one model, keeping input order and skipping bad files."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.errors import ImageError
from dreamsearch.images import open_rgb

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.embedder import Embedder


@dataclass
class EmbeddedFiles:
    """One row per input file, in input order (``vectors[i]`` belongs to ``paths[i]``). A
    file that could not be read has a row of NaN and one ``ImageError`` in ``failures``:
    rows that moved up when a file was skipped made every later row name the wrong file."""

    paths: list[Path]
    vectors: np.ndarray
    failures: list[ImageError] = field(default_factory=list)


def embed_files(embedder: Embedder, paths: list[Path], batch_size: int = 16) -> EmbeddedFiles:
    """Decode each file fully (exact preprocessing), embed in batches, keep order."""
    vectors = np.full((len(paths), embedder.dim), np.nan, dtype=np.float32)
    failures: list[ImageError] = []
    pending: list[tuple[int, np.ndarray]] = []  # (row, model input)

    def flush() -> None:
        rows = [row for row, _ in pending]
        vectors[rows] = embedder.embed(np.stack([pixels for _, pixels in pending]))
        pending.clear()

    for row, path in enumerate(paths):
        try:
            pending.append((row, embedder.preprocess(open_rgb(path))))
        except ImageError as exc:
            failures.append(exc)
            continue
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return EmbeddedFiles([Path(p) for p in paths], vectors, failures)


def write_embeddings(result: EmbeddedFiles, output: Path, fmt: str, model: str) -> None:
    """``npy``: float32 ``[N, dim]``, NaN rows for files not read. ``json``: model, dim and
    one object per file, whose ``vector`` is null (and ``error`` says why) for those."""
    if fmt == "npy":
        np.save(output, result.vectors.astype(np.float32, copy=False))
        return
    reasons = {failure.path: failure.reason for failure in result.failures}
    document = {
        "model": model,
        "dim": int(result.vectors.shape[1]),
        "embeddings": [
            {"path": str(path), "vector": vector.tolist()}
            if str(path) not in reasons
            else {"path": str(path), "vector": None, "error": reasons[str(path)]}
            for path, vector in zip(result.paths, result.vectors, strict=True)
        ],
        "failed": [{"path": f.path, "reason": f.reason} for f in result.failures],
    }
    if str(output) == "-":
        json.dump(document, sys.stdout)
        sys.stdout.write("\n")
    else:
        Path(output).write_text(json.dumps(document))
