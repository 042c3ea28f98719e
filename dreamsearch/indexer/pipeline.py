"""What happens to one new or changed file, in a reading thread: read it once, hash the
bytes, and decide from the hash whether it needs decoding at all.

    read bytes ─► hash ─┬─ content already has vectors ─► KNOWN / SAME (no decode)
                        ├─ content being decoded for another file ─► COPY (waits for it)
                        ├─ content failed earlier in this run ─► FAILED (same reason)
                        └─ new content ─┬─ baseline JPEG, GPU decoding on ─► FOR_GPU (bytes)
                                        └─ otherwise: decode on this CPU thread ─► DECODED

The outcome goes back, in order, to the thread that embeds and commits.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dreamsearch.catalog import Catalog, ModelInfo, StoredFile
from dreamsearch.images import Preprocess
from dreamsearch.decoding import Decoded, TimeLimitExceeded, decode_bytes, time_limit, too_slow
from dreamsearch.reading import read_file
from dreamsearch.scan import ScannedFile


class Kind(enum.Enum):
    """What a file needs after it was read: nothing more, waiting, or embedding."""

    SAME = "same bytes as indexed (only the mtime changed)"
    KNOWN = "content already indexed: a copy or a move"
    COPY = "a copy of a file being decoded in this run"
    FAILED = "could not be read or decoded"
    DECODED = "decoded on a CPU thread"
    FOR_GPU = "to be decoded on the GPU"


@dataclass(frozen=True)
class Candidate:
    """A new or changed file (or one whose content lacks a model's vector)."""

    found: ScannedFile  # relpath inside its root
    previous: StoredFile | None
    path: str


@dataclass
class Outcome:
    """One file's result, handed in order to the thread that embeds and commits."""

    candidate: Candidate
    kind: Kind
    content_hash: str | None = None
    decoded: Decoded | None = None
    data: bytes = b""  # FOR_GPU only
    error: str | None = None
    gave_up: bool = False  # its thread did not answer in time
    #: Each model's vector, when the file was embedded where it was decoded (Ray engine).
    vectors: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        """Known content at the path that held it: only the file's mtime changed."""
        previous = self.candidate.previous
        if self.kind is Kind.KNOWN and previous is not None and previous.content_hash == self.content_hash:
            self.kind = Kind.SAME


class Contents:
    """Which contents this run must still decode, shared by the reading threads.

    The first file with a new content claims it; a byte copy read while the claim is open
    is a COPY and waits for the claimed file's commit. ``settle`` closes a claim once the
    content is committed (later copies then find it in the catalog) or failed (later
    copies get the same reason without another decode). Open claims are at most the files
    in flight, so this does not grow with the folder."""

    def __init__(self, catalog: Catalog, models: Sequence[ModelInfo]) -> None:
        self._catalog, self._models = catalog, list(models)
        self._lock = threading.Lock()
        self._claimed: dict[str, str] = {}  # content hash -> path of the file decoding it
        self._failed: dict[str, str] = {}
        self._abandoned: dict[str, str] = {}  # path -> why the run stopped waiting for it

    def classify(self, content_hash: str, path: str) -> tuple[Kind | None, str | None]:
        """``(KNOWN|COPY|FAILED, reason)`` or ``(None, None)`` when ``path`` now owns the
        content and must decode it."""
        with self._lock:
            if path in self._abandoned:  # its thread came back after the run gave up on it
                return Kind.FAILED, self._abandoned[path]
            if self._claimed.get(content_hash, path) != path:  # its own claim: a retried file
                return Kind.COPY, None
            if content_hash in self._failed:
                return Kind.FAILED, self._failed[content_hash]
            if self._catalog.hashes_with_vectors(self._models, [content_hash]):
                return Kind.KNOWN, None
            self._claimed[content_hash] = path
            return None, None

    def settle(self, content_hash: str, error: str | None = None) -> None:
        """Close ``content_hash``'s claim: committed (``error`` None) or failed."""
        with self._lock:
            self._claimed.pop(content_hash, None)
            if error is not None:
                self._failed[content_hash] = error

    def abandon(self, path: str, reason: str) -> str | None:
        """The run gave up waiting for ``path``: the content it claimed (returned, if any)
        fails with ``reason``, and if its thread ever comes back it claims nothing."""
        with self._lock:
            self._abandoned[path] = reason
            owned = next((h for h, owner in self._claimed.items() if owner == path), None)
            if owned is not None:
                del self._claimed[owned]
                self._failed[owned] = reason
            return owned

    def failure(self, content_hash: str) -> str | None:
        """Why a content failed in this run; ``None`` if it did not (or is still claimed)."""
        with self._lock:
            return self._failed.get(content_hash)

    def is_claimed(self, content_hash: str) -> bool:
        with self._lock:
            return content_hash in self._claimed


@dataclass(frozen=True)
class FileProcessor:
    """Reads, hashes, routes and (on the CPU) decodes one candidate; never raises."""

    contents: Contents
    recipes: tuple[Preprocess, ...]
    max_file_size: int
    max_pixels: int
    draft: bool
    timeout_s: float
    gpu_route: Callable[[bytes], str | None] | None = None  # None: no GPU decoding

    def __call__(self, candidate: Candidate) -> Outcome:
        content_hash = None
        try:
            with time_limit(self.timeout_s):
                read = read_file(candidate.path, self.max_file_size)
                if read.error:
                    return Outcome(candidate, Kind.FAILED, error=read.error)
                content_hash = read.content_hash
                kind, reason = self.contents.classify(content_hash, candidate.path)
                if kind is not None:
                    return Outcome(candidate, kind, content_hash, error=reason)
                if self.gpu_route is not None and self.gpu_route(read.data) is None:
                    return Outcome(candidate, Kind.FOR_GPU, content_hash, data=read.data)
                decoded = decode_bytes(candidate.path, read.data, self.recipes, self.max_pixels, self.draft)
        except TimeLimitExceeded:
            return Outcome(candidate, Kind.FAILED, content_hash, error=too_slow(self.timeout_s))
        if decoded.error:
            return Outcome(candidate, Kind.FAILED, content_hash, error=decoded.error)
        return Outcome(candidate, Kind.DECODED, content_hash, decoded)
