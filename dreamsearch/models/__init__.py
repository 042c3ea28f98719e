"""Embedders: DreamSim variants and baselines, chosen by name from the registry."""

from __future__ import annotations

import atexit
import importlib
import os
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dreamsearch.errors import DreamsearchError
from dreamsearch.models.precision import DEFAULT_PRECISION, check_precision, chosen_backend, with_precision
from dreamsearch.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.models.clip_text import TextEncoder
    from dreamsearch.models.embedder import Embedder


class PendingModel:
    """A model ready to build: its weights are present and fingerprinted, and nothing heavy
    is imported yet. The indexer knows what it needs from it (name, weights, input recipe)
    and calls ``load`` only when a file needs embedding (or the library has never seen the
    model), so a run that finds nothing new, or only copies and moves, starts at once."""

    def __init__(
        self,
        name: str = DEFAULT_MODEL,
        weights_dir: str | os.PathLike | None = None,
        device: str = "auto",
        allow_download: bool = True,
        compile: bool = False,
        precision: str = DEFAULT_PRECISION,
        threads: int | None = None,
    ) -> None:
        from dreamsearch.models.weights import ensure_weights, fingerprint
        from dreamsearch.models.weights import weights_dir as resolve_weights_dir

        check_precision(precision, device)
        self.spec = get_spec(name)
        self.weights_root = ensure_weights(self.spec, resolve_weights_dir(weights_dir), allow_download)
        self.name = self.spec.name
        self.precision = precision
        self.weights_fingerprint = fingerprint(self.spec, self.weights_root)
        #: of the vectors: the weights' and, for int8, the precision (never mixed in an index)
        self.fingerprint = with_precision(self.weights_fingerprint, precision)
        self.preprocess_spec = self.spec.preprocess()
        # int8 runs on the CPU only (check_precision refused an explicit cuda)
        self.device, self.compile = "cpu" if precision != DEFAULT_PRECISION else device, compile
        self.threads = threads  # CPU threads for the model (default: torch's, one per core)
        self._embedder: Embedder | None = None
        self._text: TextEncoder | None = None
        self._lock = threading.Lock()

    @cached_property
    def legacy_fingerprint(self) -> str:
        """What a library made before whole-file fingerprints stored for these weights
        (computed on demand: only such a library asks for it)."""
        from dreamsearch.models.weights import legacy_fingerprint

        return with_precision(legacy_fingerprint(self.spec, self.weights_root), self.precision)

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def load(self) -> Embedder:
        """Build the embedder once (thread-safe) and keep it: from its saved OpenVINO graph
        without torch where there is one (``saved_graph``), else from the checkpoint."""
        with self._lock:
            if self._embedder is None:
                self._embedder = self._saved() or self._from_checkpoint()
            return self._embedder

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two handles the same model: they may stand in for each other."""
        return (self.name, self.weights_root, self.device, self.precision, self.compile, self.threads)

    def start_loading(self) -> threading.Thread | None:
        """Start loading in a thread of its own where that needs no torch (a saved OpenVINO
        graph); ``load`` then waits for it. None: loaded or loading already."""
        if self._embedder is not None or self._lock.locked():
            return None
        ahead = threading.Thread(target=self._load_saved, name=f"dreamsearch-load-{self.name}", daemon=True)
        ahead.start()
        return ahead

    def _load_saved(self) -> None:
        with self._lock:
            if self._embedder is None:
                try:
                    self._embedder = self._saved()
                except Exception:  # noqa: BLE001 - ``load`` tries again in the foreground and says why
                    pass

    @property
    def dim(self) -> int | None:
        """The vectors' size: the loaded model's, else read from the saved graph where the
        model runs from one (a new library records the model while it compiles:
        ``indexer.embedding``); None until it is loaded otherwise."""
        from dreamsearch.models.saved_graph import saved_dim

        if self._embedder is not None:
            return self._embedder.dim
        if not self._runs_from_saved_graph():
            return None
        return saved_dim(self.spec, self.weights_root, self.weights_fingerprint, self.precision)

    def _runs_from_saved_graph(self) -> bool:
        """OpenVINO runs it (float32 on the CPU, or int8), so it loads from a saved graph
        once one is there."""
        return not self.compile and (self.precision != DEFAULT_PRECISION or runs_on_openvino(self.device))

    def _saved(self) -> Embedder | None:
        from dreamsearch.defaults import usable_cores
        from dreamsearch.models.saved_graph import load_saved

        if not self._runs_from_saved_graph():
            return None
        embedder = load_saved(
            self.spec, self.weights_root, self.weights_fingerprint, self.precision, self.threads or usable_cores()
        )
        if embedder is not None:
            embedder.fingerprint, embedder.legacy_fingerprint = self.fingerprint, self.legacy_fingerprint
        return embedder

    def _from_checkpoint(self) -> Embedder:
        from dreamsearch.models.base import set_threads
        from dreamsearch.models.openvino_backend import attach

        set_threads(self.threads)
        embedder = self._build(self.device)
        embedder.compile = self.compile
        attach(embedder, self.weights_root, self.weights_fingerprint, self.precision)
        return embedder

    def torch_reference(self) -> Embedder:
        """A new float32 torch embedder on the CPU, whatever the backend and precision:
        what the official package computes, which ``models check`` compares with."""
        embedder = self._build("cpu")
        embedder.fingerprint = embedder.legacy_fingerprint = self.weights_fingerprint
        return embedder

    def _build(self, device: str, builder: str | None = None):
        """What ``builder`` (``module:function``; default the image model's) makes from the
        weights on ``device``, labelled with their fingerprints."""
        from dreamsearch.models.base import resolve_device

        module_name, function = (builder or self.spec.builder).split(":")
        build = getattr(importlib.import_module(module_name), function)
        built = build(self.spec, self.weights_root, resolve_device(device))
        built.fingerprint = self.fingerprint
        built.legacy_fingerprint = self.legacy_fingerprint
        return built

    def load_text(self) -> TextEncoder:
        """Build the model's text tower once (thread-safe) and keep it, apart from the image
        model: only a text query pays for it, never an index run."""
        text_model_spec(self.name)
        with self._lock:
            if self._text is None:
                self._text = self._build(self.device, self.spec.text_builder)
            return self._text


def text_model_spec(name: str) -> ModelSpec:
    """The spec of ``name`` if it has a text tower; otherwise an error naming those that do
    (DreamSim's towers are image-only fine-tunes: no text is aligned with their vectors)."""
    spec = get_spec(name)
    if not spec.text_builder:
        having = ", ".join(f"'{n}'" for n, s in MODELS.items() if s.text_builder)
        raise DreamsearchError(
            f"model '{spec.name}' has no text tower; text search uses {having} "
            f"(`-m clip`, after `dreamsearch index FOLDER -m clip`)"
        )
    return spec


def runs_on_openvino(device: str) -> bool:
    """Whether a float32 model on ``device`` runs through OpenVINO, told without importing
    torch: OpenVINO is the backend, and the device is the CPU (``auto`` is, where there is no
    NVIDIA driver; with one, torch decides on loading)."""
    return chosen_backend() == "openvino" and device in ("cpu", "auto") and not may_run_on_cuda(device)


def may_run_on_cuda(device: str) -> bool:
    """Whether ``device`` can turn out to be CUDA, told without importing torch: ``cpu``
    never does, nor does ``auto`` where there is no NVIDIA driver. An index run on the CPU
    used to import torch (1.5 s of a reading thread, ~400 MB) just to ask."""
    return device != "cpu" and (device != "auto" or Path("/proc/driver/nvidia/version").exists())


def load_ahead(
    name: str,
    *,
    weights_dir: str | os.PathLike | None,
    device: str,
    precision: str | None,
    threads: int | None = None,
) -> None:
    """Start loading ``name`` from its saved OpenVINO graph before the command imports the
    catalog layer: a cold ``query`` of ``clip`` on 2 cores spent 0.35 s waiting for the
    compile after ~0.4 s of those imports, and ``index`` into a new library compiled it
    while it decoded, both cores busy already. The library's model pool takes the handle
    (``taken_ahead``) when it asks for the same model. ``precision`` None: the library's,
    guessed as float32 (an int8 library leaves this one unused). Never raises: what is
    wrong is told where the command builds the model."""
    try:
        model = PendingModel(
            name, weights_dir, device, allow_download=False, precision=precision or DEFAULT_PRECISION, threads=threads
        )
    except DreamsearchError:
        return
    loading = model.start_loading()
    if loading is not None:
        _AHEAD[model.key] = model
        atexit.register(loading.join)  # never exit while OpenVINO compiles in another thread


def taken_ahead(model: PendingModel) -> PendingModel:
    """The handle ``load_ahead`` started for the same model as ``model``, else ``model``."""
    return _AHEAD.pop(model.key, model)


#: Handles ``load_ahead`` started, by ``PendingModel.key``; each is taken once.
_AHEAD: dict[tuple[object, ...], PendingModel] = {}


def load_model(
    name: str = DEFAULT_MODEL,
    weights_dir: str | os.PathLike | None = None,
    device: str = "auto",
    allow_download: bool = True,
    compile: bool = False,
    precision: str = DEFAULT_PRECISION,
) -> Embedder:
    """Build the embedder ``name`` with its weights from ``weights_dir`` (downloading
    missing files when the network allows). Raises :class:`~dreamsearch.errors.WeightsError`
    with instructions when weights are missing offline. ``compile`` trades a one-off
    15-60 s compilation for 10-35% more images/s on CPU (worth it for long runs);
    ``precision`` ``int8`` about 2x (``dreamsearch.models.precision``)."""
    return PendingModel(name, weights_dir, device, allow_download, compile, precision).load()


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "PendingModel", "get_spec", "load_model", "text_model_spec"]
