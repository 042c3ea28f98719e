"""What a run of ``index_folders`` is given and gives back: its options, the models it
embeds with, its report and the progress callback. The API, the CLI, the watcher and the
run's stages share these names; none of them needs the stages to use them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dreamsearch.defaults import usable_cores
from dreamsearch.images import DECODE_TIMEOUT_S, DEFAULT_MAX_PIXELS, Preprocess
from dreamsearch.reading import DEFAULT_MAX_FILE_SIZE
from dreamsearch.scan import ScannedFile

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from dreamsearch.models.embedder import Embedder


class ModelSource(Protocol):
    """A model as the indexer needs it: known without loading (name, weights' fingerprint,
    input recipe, device, weights folder), loaded only when a file needs embedding. A
    ``PendingModel`` is one, and so is a loaded ``Embedder``."""

    name: str
    fingerprint: str
    preprocess_spec: Preprocess

    @property
    def device(self) -> str | torch.device:
        """Where the model runs: on CUDA, baseline JPEGs are decoded there too."""

    @property
    def dim(self) -> int | None:
        """The vectors' size if known before loading (a loaded embedder's, a saved graph's)."""

    @property
    def weights_root(self) -> Path | None:
        """The weights folder each Ray node builds the model from; ``None`` for a loaded
        embedder (it cannot go to Ray)."""

    def load(self) -> Embedder: ...


@dataclass
class IndexReport:
    """What a run did; ``failures`` holds ``(path, reason)`` for every unreadable file."""

    found: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    moved: int = 0
    copied: int = 0
    removed: int = 0
    failed: int = 0
    embedded: int = 0
    #: New or changed files to read (known after each folder's scan) and read so far.
    to_read: int = 0
    read: int = 0
    #: Files decoded and waiting for the model.
    waiting: int = 0
    #: Folders whose scan has not ended: while above 0, ``to_read`` and ``to_embed`` grow.
    scanning: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    #: Set the moment Ctrl-C is pressed: the model call in flight is being finished.
    stopping: bool = False
    kept: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing_roots: list[str] = field(default_factory=list)
    #: ``(folder, files gone from disk, files indexed there)`` for folders whose gone files
    #: were kept because the folder looks unmounted (see ``IndexOptions.prune``).
    kept_folders: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def to_embed(self) -> int:
        """The work of the run, in images: those embedded, those waiting for the model, and
        those not read yet (a file read later may turn out a copy, and not count any more).
        Files already indexed, copies and moves are not counted."""
        return self.embedded + self.waiting + self.to_read - self.read

    def summary(self) -> dict[str, object]:
        keys = (
            "found",
            "unchanged",
            "new",
            "changed",
            "moved",
            "copied",
            "removed",
            "kept",
            "failed",
            "embedded",
            "read",
        )
        return {key: getattr(self, key) for key in keys} | {
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class IndexOptions:
    #: Images per commit. ``None``: on a CPU, as many as the model embeds in about 5 s
    #: (the first one alone, so the first commit comes fast: ``pace``); on CUDA, with a
    #: compiled model or with the Ray engine, 32. Given or not, a CPU model (uncompiled)
    #: takes about 5 s of images at a time, so a stop is answered within seconds.
    batch_size: int | None = None
    #: CPU threads that read, hash and decode; 0 does it all in the calling thread. Two per
    #: core (at most 8). One per core left 2 quiet cores busy, but on a loaded machine the
    #: scheduler shares the CPU out by thread: with 8 busy processes beside it, 100 large
    #: wallpapers took 112-146 s with 2 reading threads and 44-49 s with 4 (12.1-12.5 s
    #: either way when quiet; docs/performance.md, "Against rclip"). One fewer than the
    #: cores kept only ~1.35 of 2 busy. The model's OpenMP threads sleep while they wait
    #: (``OMP_WAIT_POLICY``), so the threads share the cores rather than fight for them.
    workers: int = field(default_factory=lambda: max(1, min(8, 2 * usable_cores())))
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = False
    draft: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    decode_timeout_s: float = DECODE_TIMEOUT_S
    dry_run: bool = False
    #: Index only these paths (relative, posix) of each root and leave its other files as
    #: they are (neither added nor forgotten); ``None``: every image.
    only: frozenset[str] | None = None
    #: Forget gone files even when a folder lost all or most of them in one run.
    prune: bool = False
    #: Read every failed file again, also those whose failure is permanent or came back
    #: ``TRANSIENT_TRIES`` runs in a row (by default only transient ones are retried).
    retry_failed: bool = False
    #: Decode baseline JPEGs in batches on this device (``"cuda"``), the rest on the CPU
    #: threads. ``"auto"``: on the models' device when that is CUDA (measured 2.6x faster
    #: end to end on an H100, docs/indexing.md). ``"cpu"`` runs the same batched path on
    #: torchvision's CPU decoder (tests, comparisons). ``None``: everything on the CPU threads.
    gpu_decode: str | None = "auto"
    #: Where files are read, decoded and embedded: ``"local"`` (threads of this process) or
    #: ``"ray"`` (a Ray cluster; this process still scans and commits, docs/scale-out.md).
    engine: str = "local"
    #: The Ray cluster to join (``"auto"``, ``"HOST:PORT"``); ``None``: ``$RAY_ADDRESS`` or
    #: a cluster of this machine started for the run.
    ray_address: str | None = None


Progress = Callable[[IndexReport], None]
#: Called in a reading thread with each file decoded on the CPU and its picture.
OnPicture = Callable[[ScannedFile, "Image.Image"], None]
