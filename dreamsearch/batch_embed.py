"""Embed a list of image files with one model, keeping input order and skipping bad files."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamsearch.errors import ImageError
from dreamsearch.images import open_rgb
from dreamsearch.models.base import Embedder


@dataclass
class EmbeddedFiles:
    """Vectors for the files that could be read (``vectors[i]`` belongs to ``paths[i]``,
    in input order) and one ``ImageError`` per file that could not."""

    paths: list[Path]
    vectors: np.ndarray
    failures: list[ImageError] = field(default_factory=list)


def embed_files(embedder: Embedder, paths: list[Path], batch_size: int = 16) -> EmbeddedFiles:
    """Decode each file fully (exact preprocessing), embed in batches, keep order."""
    kept: list[Path] = []
    failures: list[ImageError] = []
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    for path in paths:
        try:
            pending.append(embedder.preprocess(open_rgb(path)))
        except ImageError as exc:
            failures.append(exc)
            continue
        kept.append(Path(path))
        if len(pending) == batch_size:
            chunks.append(embedder.embed(np.stack(pending)))
            pending = []
    if pending:
        chunks.append(embedder.embed(np.stack(pending)))
    vectors = np.concatenate(chunks) if chunks else np.empty((0, embedder.dim), np.float32)
    return EmbeddedFiles(kept, vectors, failures)


def write_embeddings(result: EmbeddedFiles, output: Path, fmt: str, model: str) -> None:
    """``npy``: float32 ``[N, dim]``. ``json``: model, dim and one object per file."""
    if fmt == "npy":
        np.save(output, result.vectors.astype(np.float32, copy=False))
        return
    document = {
        "model": model,
        "dim": int(result.vectors.shape[1]),
        "embeddings": [
            {"path": str(path), "vector": vector.tolist()}
            for path, vector in zip(result.paths, result.vectors)
        ],
        "failed": [{"path": f.path, "reason": f.reason} for f in result.failures],
    }
    if str(output) == "-":
        json.dump(document, sys.stdout)
        sys.stdout.write("\n")
    else:
        Path(output).write_text(json.dumps(document))
