"""What runs on the Ray cluster for ``--engine ray``: decode tasks (the local engine's
``FileProcessor`` on a few files each) and embed actors (every model of the run, built
once per actor from its node's weights folder), and the rows they hand back to the
driver (``outcome_of`` turns one into an ``Outcome``). Kept apart from the engine's
scheduling (``ray_engine``): this is what workers import and run.

Any failure here that is not a file's (a bug, the registry gone, a node without the
weights) comes back as a row's ``run_error`` rather than an exception, so it stops the
run with one line rather than mark good files failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dreamsearch.errors import DreamsearchError, WeightsError
from dreamsearch.images import Decoded, Preprocess
from dreamsearch.indexer.outcomes import (
    AlreadyIndexed,
    Candidate,
    CopyOfClaimed,
    DecodedContent,
    EmbeddedContent,
    Failed,
    Outcome,
)
from dreamsearch.indexer.pipeline import FileProcessor
from dreamsearch.indexer.ray_claims import RemoteContents
from dreamsearch.models.precision import DEFAULT_PRECISION
from dreamsearch.scan import ScannedFile


@dataclass(frozen=True)
class ModelOnNode:
    """What an actor needs to build a model from its own node's weights folder, and the
    fingerprint the driver's weights have (a node with other weights must not embed)."""

    name: str
    weights_dir: str
    device: str
    fingerprint: str
    precision: str = DEFAULT_PRECISION
    compile: bool = False


@dataclass(frozen=True)
class DecodeSettings:
    """What a decode task needs of the run's options."""

    recipes: tuple[Preprocess, ...]
    max_file_size: int
    max_pixels: int
    draft: bool
    timeout_s: float


def decode_task(batch: dict[str, np.ndarray], registry: Any, settings: DecodeSettings) -> dict[str, np.ndarray]:
    """A decode task: the local engine's ``FileProcessor`` on each file of the batch. Bad
    files are outcomes; an exception is not a file's fault (a bug, the registry gone), so
    it comes back as ``run_error``, which stops the run, and never drops the block (whose
    files would then be tried alone and recorded as crashing their decoder)."""
    paths = batch["path"]
    try:
        processor = FileProcessor(
            RemoteContents(registry),
            settings.recipes,
            settings.max_file_size,
            settings.max_pixels,
            settings.draft,
            settings.timeout_s,
        )
        outcomes = processor.process(
            [
                Candidate(
                    ScannedFile(str(relpath), int(size), int(mtime_ns), problem=str(problem) or None), None, str(path)
                )
                for path, relpath, size, mtime_ns, problem in zip(
                    paths, batch["relpath"], batch["size"], batch["mtime_ns"], batch["problem"], strict=True
                )
            ]
        )
        return _decoded_columns(paths, outcomes, len(settings.recipes))
    except Exception as exc:
        return _decoded_columns(paths, [None] * len(paths), len(settings.recipes), _one_line("a decode task", exc))


def _decoded_columns(
    paths: np.ndarray, outcomes: Sequence[Outcome | None], recipes: int, run_error: str = ""
) -> dict[str, np.ndarray]:
    """The decode stage's rows (the same columns whatever happened: Ray joins blocks).
    ``kind`` names the outcome's type; no outcome (``run_error``) is a ``Failed`` one."""
    decoded = [o.decoded if isinstance(o, DecodedContent) else Decoded() for o in outcomes]
    columns = {
        "run_error": _objects(run_error for _ in outcomes),
        "path": paths,
        "kind": _objects(type(o).__name__ if o is not None else Failed.__name__ for o in outcomes),
        "content_hash": _objects((o.content_hash or "") if o is not None else "" for o in outcomes),
        "error": _objects(o.error if isinstance(o, Failed) else "" for o in outcomes),
        "width": np.array([d.width for d in decoded], np.int64),
        "height": np.array([d.height for d in decoded], np.int64),
        "format": _objects(d.format for d in decoded),
    }
    for i in range(recipes):
        columns[f"pixels_{i}"] = _objects(d.pixels[i].tobytes() if d.pixels else b"" for d in decoded)
    return columns


def outcome_of(candidate: Candidate, row: dict[str, Any], models: int, too_slow_reason: str) -> Outcome:
    """The driver's outcome for one row, ``candidate`` being the file as the driver scanned
    it. A decoded row comes back embedded by the actors, with each model's vector."""
    kind, content_hash, error = row["kind"], str(row["content_hash"]), str(row["error"])
    if kind == DecodedContent.__name__:
        decoded = Decoded(int(row["width"]), int(row["height"]), str(row["format"]))
        vectors = tuple(np.frombuffer(row[f"vector_{i}"], np.float32) for i in range(models))
        return EmbeddedContent(candidate, content_hash, decoded, vectors)
    if kind == AlreadyIndexed.__name__:
        return AlreadyIndexed(candidate, content_hash)
    if kind == CopyOfClaimed.__name__:
        return CopyOfClaimed(candidate, content_hash)
    # a file over the time limit counts toward a hung folder's
    return Failed(candidate, error, content_hash or None, gave_up=error == too_slow_reason)


def _one_line(where: str, exc: BaseException) -> str:
    return f"{where} on node {os.uname().nodename} failed: {type(exc).__name__}: {exc}".splitlines()[0]


def embedders_for(on_nodes: list[ModelOnNode]) -> type:
    """The actor class for these models. They travel as a class attribute, not constructor
    arguments, which Ray keeps in the object store and warns it may lose on a restart."""
    return type("Embedders", (_Embedders,), {"on_nodes": tuple(on_nodes)})


class _Embedders:
    """An embed actor: every model of the run, built once from this node's weights."""

    on_nodes: tuple[ModelOnNode, ...] = ()

    def __init__(self) -> None:
        from dreamsearch.defaults import usable_cores
        from dreamsearch.models import PendingModel

        self._models = []
        #: Why this node cannot embed. Sent back with the first batch rather than raised:
        #: Ray would hand the driver a traceback, not the one-line reason.
        self._unable: str | None = None
        node = os.uname().nodename
        try:
            for wanted in self.on_nodes:
                pending = PendingModel(
                    wanted.name,
                    wanted.weights_dir,
                    wanted.device,
                    allow_download=False,
                    compile=wanted.compile,
                    precision=wanted.precision,
                    # the node's cores, as a local run uses (Ray would give torch one thread
                    # per CPU the actor asked for); set on loading, so that a model run from
                    # its saved OpenVINO graph imports no torch (2.5 CPU-s and ~400 MB an actor)
                    threads=usable_cores(),
                )
                if pending.fingerprint != wanted.fingerprint:
                    raise WeightsError(
                        f"{wanted.name}: the weights in {wanted.weights_dir} differ from the "
                        f"driver's; give every node the same files"
                    )
                self._models.append(pending.load())
        except DreamsearchError as exc:
            self._unable = f"on node {node}: {exc}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vectors for the decoded rows; any failure here is the model's or the node's, not
        a file's, so it comes back as ``run_error`` (see ``decode_task``)."""
        columns = {name: values for name, values in batch.items() if not name.startswith("pixels_")}
        for i in range(len(self.on_nodes)):
            columns[f"vector_{i}"] = _objects(b"" for _ in batch["path"])
        try:
            if self._unable:
                raise DreamsearchError(self._unable)
            decoded = np.flatnonzero(batch["kind"] == DecodedContent.__name__)
            for i, model in enumerate(self._models):
                if len(decoded):
                    side = model.preprocess_spec.size
                    pixels = np.stack(
                        [np.frombuffer(batch[f"pixels_{i}"][j], np.uint8).reshape(side, side, 3) for j in decoded]
                    )
                    for j, vector in zip(decoded, model.embed(pixels), strict=True):
                        columns[f"vector_{i}"][j] = np.ascontiguousarray(vector, np.float32).tobytes()
        except DreamsearchError as exc:
            columns["run_error"] = _objects(str(exc) for _ in batch["path"])
        except Exception as exc:
            columns["run_error"] = _objects(_one_line("embedding", exc) for _ in batch["path"])
        return columns


def _objects(values: Iterable[str | bytes]) -> np.ndarray:
    """A column of strings or bytes (``np.array`` would make fixed-width arrays of them)."""
    column = list(values)
    array = np.empty(len(column), dtype=object)
    array[:] = column
    return array
