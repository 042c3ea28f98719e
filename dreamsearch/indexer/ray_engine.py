"""``dreamsearch index --engine ray``: the local run's stages, scheduled on a Ray cluster.

    driver (the local run, unchanged)             Ray cluster
    scan, diff ─► chunk of candidates ─► Ray Data ─► decode tasks (CPU) ─► embed actors (GPU | CPU)
                                                       │ read, hash, ask the       │ one per GPU, the
                                                       │ registry: known? copy?    │ same Embedder
    commit batch by batch ◄──────── rows: kind, hash, size, one vector per model ◄─┘

Only the scheduling differs from the local engine: decode tasks run the same
``FileProcessor`` (one read, hash, decode), actors the same ``Embedder`` (``ray_tasks``),
and the driver commits through the same code (``run``, ``batches``), so the catalog keeps
one writer and a killed driver loses only the batches in flight. Which contents a run has
claimed lives in the same ``Contents``, held by a registry actor on the driver's node that
reads the catalog (``ray_claims``).

A decode task whose worker dies is run again by Ray; files whose task died
``DECODE_TRIES`` times are then tried one per task (``ALONE_TRIES`` times), and a file that
still kills its worker is recorded as failed (a decoder that segfaults on it), never
retried forever. Any other failure in a task or actor is not a file's fault: it stops the
run with a one-line error (``run_error``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Generator, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamsearch.catalog import ModelInfo
from dreamsearch.errors import DreamsearchError
from dreamsearch.images import too_slow
from dreamsearch.indexer.outcomes import Candidate, Failed, Outcome
from dreamsearch.indexer.pace import DEFAULT_BATCH
from dreamsearch.indexer.ray_claims import DriverContents, Registry
from dreamsearch.indexer.ray_tasks import DecodeSettings, ModelOnNode, decode_task, embedders_for, outcome_of
from dreamsearch.indexer.stream import prefetched
from dreamsearch.models.precision import DEFAULT_PRECISION

if TYPE_CHECKING:
    from dreamsearch.indexer.options import IndexOptions, ModelSource

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


class RayEngine:
    """Connects to (or starts) a Ray cluster when the first file needs reading, and turns
    candidates into outcomes there; ``close`` lets go of what it started."""

    def __init__(
        self,
        address: str | None,
        catalog_path: Path,
        models: Sequence[ModelInfo],
        on_nodes: Sequence[ModelOnNode],
        settings: DecodeSettings,
        batch_size: int,
    ) -> None:
        self._ray = require_ray()
        self._address, self._catalog_path, self._models = address, catalog_path, list(models)
        self._on_nodes, self._settings, self._batch_size = list(on_nodes), settings, batch_size
        self._started_ray = False
        self._too_slow = too_slow(settings.timeout_s)
        self._registry: Any = None
        #: The run's claims, as the driver asks about them.
        self.contents = DriverContents(self.registry)

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
            weights = source.weights_root
            if weights is None:
                raise DreamsearchError(
                    f"--engine ray builds {source.name} on each node from its weights folder: "
                    f"give the model by name, not as a loaded embedder"
                )
            on_nodes.append(
                ModelOnNode(
                    source.name,
                    str(weights),
                    str(source.device),
                    source.fingerprint,
                    getattr(source, "precision", DEFAULT_PRECISION),
                    getattr(source, "compile", False),
                )
            )
        settings = DecodeSettings(
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
                ray.remote(Registry)
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
                    yield outcome_of(candidate, row, len(self._on_nodes), self._too_slow)
            if not waiting:
                return
        for candidate in waiting.values():
            reason = f"the process decoding it died {DECODE_TRIES + ALONE_TRIES} times (a decoder crash?)"
            yield Failed(candidate, reason, self.contents.abandon(candidate.path, reason))

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
        # first: Ray Data, used before this process has connected, starts a Ray of its own
        # (and then ran the whole run there, whatever --ray-address said)
        registry = self.registry()
        dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_task))
        with warnings.catch_warnings():  # Ray 2.60 has no other way to bound a task's retries
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = dataset.map_batches(
                decode_task,
                batch_size=per_task,
                batch_format="numpy",
                num_cpus=1,
                max_retries=(ALONE_TRIES if alone else DECODE_TRIES) - 1,
                fn_kwargs={"registry": registry, "settings": self._settings},
            )
        dataset = dataset.map_batches(
            embedders_for(self._on_nodes), batch_size=self._batch_size, batch_format="numpy", **self._actor_resources()
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
