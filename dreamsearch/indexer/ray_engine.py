"""``dreamsearch index --engine ray``: the local run's stages, scheduled on a Ray cluster.

    driver (run._Run, unchanged)                  Ray cluster
    scan, diff ─► chunk of candidates ─► Ray Data ─► decode tasks (CPU) ─► embed actors (GPU | CPU)
                                                       │ read, hash, ask the       │ one per GPU, the
                                                       │ registry: known? copy?    │ same Embedder
    commit batch by batch ◄──────── rows: kind, hash, size, one vector per model ◄─┘

Only the scheduling differs from the local engine: decode tasks run the same
``FileProcessor`` (one read, hash, decode), actors the same ``Embedder``, and the driver
commits through the same ``_Run`` code, so the catalog keeps one writer and a killed driver
loses only the batches in flight. Which contents a run has claimed lives in the same
``Contents``, held by a registry actor on the driver's node that reads the catalog.

A decode task whose worker dies is run again by Ray; files whose task died
``DECODE_TRIES`` times are then tried one per task (``ALONE_TRIES`` times), and a file that
still kills its worker is recorded as failed (a decoder that segfaults on it), never
retried forever. Any other failure in a task or actor is not a file's fault: it stops the
run with a one-line error (``run_error``).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dreamsearch.catalog import Catalog, ModelInfo
from dreamsearch.decoding import Decoded, too_slow
from dreamsearch.errors import DreamsearchError, WeightsError
from dreamsearch.images import Preprocess
from dreamsearch.indexer.pace import DEFAULT_BATCH
from dreamsearch.indexer.pipeline import Candidate, Contents, FileProcessor, Kind, Outcome
from dreamsearch.indexer.stream import prefetched
from dreamsearch.models.precision import DEFAULT_PRECISION
from dreamsearch.scan import ScannedFile

if TYPE_CHECKING:
    from dreamsearch.indexer.run import IndexOptions, ModelSource

#: Candidates per Ray dataset: the first is small so the first batch commits soon; later
#: ones grow so each actor's model load is spread over many files (docs/scale-out.md).
FIRST_CHUNK = 1024
MAX_CHUNK = 65_536
#: Files per decode task: short tasks keep every CPU busy and make a retry cheap.
DECODE_BATCH = 8
#: How many times a decode task is run when its worker process dies; then its files are
#: run one per task, ``ALONE_TRIES`` times each.
DECODE_TRIES = 3
ALONE_TRIES = 2
INSTALL_HINT = "--engine ray needs Ray: pip install 'dreamsearch[ray]'"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the optional extra brings it; plain ``ray`` lacks it)
    except ImportError:
        raise DreamsearchError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class ModelOnNode:
    """What an actor needs to build a model from its own node's weights folder, and the
    fingerprint the driver's weights have (a node with other weights must not embed)."""

    name: str
    weights_dir: str
    device: str
    fingerprint: str
    precision: str = DEFAULT_PRECISION


@dataclass(frozen=True)
class _DecodeSettings:
    recipes: tuple[Preprocess, ...]
    max_file_size: int
    max_pixels: int
    draft: bool
    timeout_s: float


class RayEngine:
    """Connects to (or starts) a Ray cluster when the first file needs reading, and turns
    candidates into outcomes there; ``close`` lets go of what it started."""

    def __init__(
        self,
        address: str | None,
        catalog_path: Path,
        models: Sequence[ModelInfo],
        on_nodes: Sequence[ModelOnNode],
        settings: _DecodeSettings,
        batch_size: int,
    ) -> None:
        self._ray = require_ray()
        self._address, self._catalog_path, self._models = address, catalog_path, list(models)
        self._on_nodes, self._settings, self._batch_size = list(on_nodes), settings, batch_size
        self._started_ray = False
        self._too_slow = too_slow(settings.timeout_s)
        self._registry: Any = None
        #: The run's claims, as the driver asks about them.
        self.contents = _DriverContents(self)

    @classmethod
    def for_run(
        cls,
        address: str | None,
        catalog_path: Path,
        models: Sequence[ModelInfo],
        sources: Sequence[ModelSource],
        options: IndexOptions,
    ) -> RayEngine:
        """The engine for one indexing run (``options``: its ``IndexOptions``)."""
        on_nodes = []
        for source in sources:
            weights = getattr(source, "root", None)
            if weights is None:
                raise DreamsearchError(
                    f"--engine ray builds {source.name} on each node from its weights folder: "
                    f"give the model by name, not as a loaded embedder"
                )
            on_nodes.append(
                ModelOnNode(
                    source.name,
                    str(weights),
                    str(getattr(source, "device", "auto")),
                    source.fingerprint,
                    getattr(source, "precision", DEFAULT_PRECISION),
                )
            )
        settings = _DecodeSettings(
            tuple(s.preprocess_spec for s in sources),
            options.max_file_size,
            options.max_pixels,
            options.draft,
            options.decode_timeout_s,
        )
        return cls(address, catalog_path, models, on_nodes, settings, options.batch_size or DEFAULT_BATCH)

    def registry(self) -> Any:
        """The registry actor, started on the driver's node when first needed: a run with
        nothing to read starts no Ray at all."""
        if self._registry is None:
            self._connect()
            ray = self._ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            # No restarts: a new registry would know none of the run's claims (RemoteContents
            # stops the run instead, and the next run resumes).
            self._registry = (
                ray.remote(_Registry)
                .options(
                    num_cpus=0,
                    scheduling_strategy=here,
                    max_restarts=0,
                    max_task_retries=0,
                )
                .remote(str(self._catalog_path), self._models)
            )
        return self._registry

    def outcomes(self, candidates: Iterator[Candidate]) -> Generator[Outcome, None, None]:
        """Each candidate's outcome (in no particular order), chunk by chunk; the scan
        finds the next chunk while the cluster works on this one."""
        ahead = prefetched(candidates, MAX_CHUNK)
        size = FIRST_CHUNK
        try:
            while chunk := list(islice(ahead, size)):
                yield from self._chunk_outcomes(chunk)
                size = min(4 * size, MAX_CHUNK)
        finally:
            ahead.close()

    def close(self) -> None:
        """Stop the registry and, if this run started Ray, Ray; also after an error."""
        try:
            if self._registry is not None:
                try:  # its queued settles first, so Ray reports no failed calls after the kill
                    self._ray.get(self._registry.ping.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - gone or slow: it is killed either way
                    pass
                self._ray.kill(self._registry)
        finally:
            if self._started_ray:
                self._ray.shutdown()

    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self._address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            self._started_ray = True
        for handler in logging.getLogger("ray.data").handlers:  # the console, not Ray's log file
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL)  # a dropped block is logged with a traceback

    def _chunk_outcomes(self, chunk: list[Candidate]) -> Iterator[Outcome]:
        """Outcomes of one chunk; files whose decode task kept dying are tried alone, and
        those that still kill it fail."""
        waiting = {c.path: c for c in chunk}
        for alone in (False, True):
            for row in self._rows(list(waiting.values()), alone):
                candidate = waiting.pop(row["path"], None)
                if candidate is not None:
                    yield self._outcome(candidate, row)
            if not waiting:
                return
        for candidate in waiting.values():
            reason = f"the process decoding it died {DECODE_TRIES + ALONE_TRIES} times (a decoder crash?)"
            yield Outcome(candidate, Kind.FAILED, self.contents.abandon(candidate.path, reason), error=reason)

    def _rows(self, candidates: list[Candidate], alone: bool) -> Iterator[dict[str, Any]]:
        """Run candidates through decode tasks and embed actors. A block whose task died
        every time is dropped (the caller sees its files missing); an exception is not a
        file's fault (bad files are outcomes), so it comes back as ``run_error`` and stops
        the run rather than mark good files failed."""
        ray = self._ray
        items = [
            {
                "path": c.path,
                "relpath": c.found.relpath,
                "size": c.found.size,
                "mtime_ns": c.found.mtime_ns,
                "problem": c.found.problem or "",
            }
            for c in candidates
        ]
        per_task = 1 if alone else DECODE_BATCH
        dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_task))
        with warnings.catch_warnings():  # Ray 2.60 has no other way to bound a task's retries
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = dataset.map_batches(
                _decode,
                batch_size=per_task,
                batch_format="numpy",
                num_cpus=1,
                max_retries=(ALONE_TRIES if alone else DECODE_TRIES) - 1,
                fn_kwargs={"registry": self.registry(), "settings": self._settings},
            )
        dataset = dataset.map_batches(
            _embedders_for(self._on_nodes), batch_size=self._batch_size, batch_format="numpy", **self._actor_resources()
        )
        dataset.context.max_errored_blocks = -1
        dataset.context.enable_progress_bars = False
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            errors = [e for e in batch["run_error"] if e]
            if errors:  # the model, its weights or a bug, not a file: the run stops, as a local one would
                raise DreamsearchError(errors[0])
            columns = list(batch)
            for i in range(len(batch["path"])):
                yield {name: batch[name][i] for name in columns}

    def _actor_resources(self) -> dict[str, Any]:
        """One actor per GPU when the cluster has GPUs and the models may use them; else
        one CPU actor per node (its torch threads use the node's cores)."""
        resources = self._ray.cluster_resources()
        if resources.get("CPU", 0) < 2:  # an actor holding the only CPU would starve every decode task
            raise DreamsearchError(
                f"--engine ray needs 2 CPUs or more in the cluster (it has "
                f"{resources.get('CPU', 0):g}): one for the model, the others to decode"
            )
        gpus = int(resources.get("GPU", 0))
        devices = {m.device for m in self._on_nodes}
        if gpus and devices != {"cpu"}:
            return {"compute": self._ray.data.ActorPoolStrategy(size=gpus), "num_gpus": 1, "num_cpus": 1}
        nodes = sum(1 for node in self._ray.nodes() if node.get("Alive"))
        return {"compute": self._ray.data.ActorPoolStrategy(size=max(1, nodes)), "num_cpus": 1}

    def _outcome(self, candidate: Candidate, row: dict[str, Any]) -> Outcome:
        kind = Kind[row["kind"]]
        content_hash = row["content_hash"] or None
        error = row["error"] or None
        if kind is not Kind.DECODED:  # a file over the time limit counts toward a hung folder's
            return Outcome(candidate, kind, content_hash, error=error, gave_up=error == self._too_slow)
        decoded = Decoded(int(row["width"]), int(row["height"]), str(row["format"]))
        vectors = tuple(np.frombuffer(row[f"vector_{i}"], np.float32) for i in range(len(self._on_nodes)))
        return Outcome(candidate, kind, content_hash, decoded, vectors=vectors)


class RemoteContents:
    """``pipeline.Contents`` reached through the registry actor, from decode tasks and the
    driver alike. Calls from one caller run in the order made, so a ``settle`` the driver
    sends without waiting is seen by its next question."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    @property
    def actor(self) -> Any:
        return self._actor

    def classify(self, files: Sequence[tuple[str, str]]) -> list[tuple[Kind | None, str | None]]:
        answers: list[tuple[Kind | None, str | None]] = self._ask("classify", files)
        return answers

    def settle(self, content_hash: str, error: str | None = None) -> None:
        self.actor.call.remote("settle", content_hash, error)

    def release(self, path: str) -> None:
        self.actor.call.remote("release", path)

    def abandon(self, path: str, reason: str) -> str | None:
        claimed_by: str | None = self._ask("abandon", path, reason)
        return claimed_by

    def failure(self, content_hash: str) -> str | None:
        reason: str | None = self._ask("failure", content_hash)
        return reason

    def is_claimed(self, content_hash: str) -> bool:
        claimed: bool = self._ask("is_claimed", content_hash)
        return claimed

    def _ask(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(self.actor.call.remote(method, *args))
        except ray.exceptions.RayActorError:
            raise DreamsearchError(
                "the run's registry actor (on the driver's node) died; committed batches are "
                "kept: run the same command again to resume"
            ) from None


class _DriverContents(RemoteContents):
    """The driver's side, which starts the registry only when first asked."""

    def __init__(self, engine: RayEngine) -> None:
        super().__init__(None)
        self._engine = engine

    @property
    def actor(self) -> Any:
        return self._engine.registry()


class _Registry:
    """The run's ``Contents`` on the driver's node, reading the catalog the driver writes."""

    def __init__(self, catalog_path: str, models: list[ModelInfo]) -> None:
        self._contents = Contents(Catalog(Path(catalog_path), read_only=True), models)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self._contents, method)(*args)

    def ping(self) -> None:
        """Answered once every call sent before it by the same caller is done."""


def _decode(batch: dict[str, np.ndarray], registry: Any, settings: _DecodeSettings) -> dict[str, np.ndarray]:
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
    """The decode stage's rows (the same columns whatever happened: Ray joins blocks)."""
    known = [o or Outcome(Candidate(ScannedFile("", 0, 0), None, ""), Kind.FAILED) for o in outcomes]
    decoded = [o.decoded if o.kind is Kind.DECODED and o.decoded is not None else Decoded() for o in known]
    columns = {
        "run_error": _objects(run_error for _ in known),
        "path": paths,
        "kind": _objects(o.kind.name for o in known),
        "content_hash": _objects(o.content_hash or "" for o in known),
        "error": _objects(o.error or "" for o in known),
        "width": np.array([d.width for d in decoded], np.int64),
        "height": np.array([d.height for d in decoded], np.int64),
        "format": _objects(d.format for d in decoded),
    }
    for i in range(recipes):
        columns[f"pixels_{i}"] = _objects(d.pixels[i].tobytes() if d.pixels else b"" for d in decoded)
    return columns


def _one_line(where: str, exc: BaseException) -> str:
    return f"{where} on node {os.uname().nodename} failed: {type(exc).__name__}: {exc}".splitlines()[0]


def _embedders_for(on_nodes: list[ModelOnNode]) -> type:
    """The actor class for these models. They travel as a class attribute, not constructor
    arguments, which Ray keeps in the object store and warns it may lose on a restart."""
    return type("Embedders", (_Embedders,), {"on_nodes": tuple(on_nodes)})


class _Embedders:
    """An embed actor: every model of the run, built once from this node's weights."""

    on_nodes: tuple[ModelOnNode, ...] = ()

    def __init__(self) -> None:
        from dreamsearch.models import PendingModel
        from dreamsearch.models.base import set_threads

        set_threads(os.cpu_count())  # as a local run; Ray would give torch 1 thread per requested CPU
        self._models = []
        #: Why this node cannot embed. Sent back with the first batch rather than raised:
        #: Ray would hand the driver a traceback, not the one-line reason.
        self._unable: str | None = None
        node = os.uname().nodename
        try:
            for wanted in self.on_nodes:
                handle = PendingModel(
                    wanted.name, wanted.weights_dir, wanted.device, allow_download=False, precision=wanted.precision
                )
                if handle.fingerprint != wanted.fingerprint:
                    raise WeightsError(
                        f"{wanted.name}: the weights in {wanted.weights_dir} differ from the "
                        f"driver's; give every node the same files"
                    )
                self._models.append(handle.load())
        except DreamsearchError as exc:
            self._unable = f"on node {node}: {exc}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vectors for the decoded rows; any failure here is the model's or the node's, not
        a file's, so it comes back as ``run_error`` (see ``_decode``)."""
        columns = {name: values for name, values in batch.items() if not name.startswith("pixels_")}
        for i in range(len(self.on_nodes)):
            columns[f"vector_{i}"] = _objects(b"" for _ in batch["path"])
        try:
            if self._unable:
                raise DreamsearchError(self._unable)
            decoded = np.flatnonzero(batch["kind"] == Kind.DECODED.name)
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
