"""What happens to a new or changed file, in a reading thread (or a Ray decode task): read
it once, hash the bytes, and decide from the hash whether it needs decoding at all.

    read bytes ─► hash ─┬─ content already has vectors ─► AlreadyIndexed (no decode)
                        ├─ content being decoded for another file ─► CopyOfClaimed (waits for it)
                        ├─ content failed earlier in this run ─► Failed (same reason)
                        └─ new content ─┬─ baseline JPEG, GPU decoding on ─► ForDevice (bytes)
                                        └─ otherwise: decode on this CPU thread ─► DecodedContent

The outcome (``outcomes``) goes back to the thread that embeds and commits. A Ray task
processes a few files at a time and asks about all their hashes at once (one round trip
to the registry).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

from dreamsearch.images import Preprocess, TimeLimitExceeded, decode_bytes, time_limit, too_slow
from dreamsearch.indexer.options import OnPicture
from dreamsearch.indexer.outcomes import (
    AlreadyIndexed,
    Candidate,
    CopyOfClaimed,
    DecodedContent,
    Failed,
    ForDevice,
    Outcome,
)
from dreamsearch.reading import FileBytes, read_file

if TYPE_CHECKING:  # Ray's decode workers import this module and read no catalog
    from dreamsearch.catalog import Catalog, ModelInfo


class ContentState(enum.Enum):
    """What the run's claims know of a content a file holds; a file whose content is
    none of these claims it, and decodes it."""

    INDEXED = "every model's vectors are in the catalog"
    CLAIMED = "another file of this run claimed it and is decoding it"
    FAILED = "failed earlier in this run"


#: ``(state, reason)`` per file (a reason for ``FAILED`` only); ``(None, None)``: the file
#: claimed its content.
Answer = tuple[ContentState | None, str | None]


class ClaimRegistry(Protocol):
    """The run's claims on contents, as reading threads and the committing thread ask
    about them: ``Contents`` in this process, or ``ray_claims.RemoteContents`` reaching one
    through an actor."""

    def classify(self, files: Sequence[tuple[str, str]]) -> list[Answer]: ...
    def release(self, path: str) -> None: ...
    def settle(self, content_hash: str, error: str | None = None) -> None: ...
    def abandon(self, path: str, reason: str) -> str | None: ...
    def failure(self, content_hash: str) -> str | None: ...
    def is_claimed(self, content_hash: str) -> bool: ...


class Contents:
    """Which contents this run must still decode, shared by the reading threads.

    The first file with a new content claims it; a byte copy read while the claim is open
    is a ``CopyOfClaimed`` and waits for the claimed file's commit. ``settle`` closes a
    claim once the content is committed (later copies then find it in the catalog) or
    failed (later copies get the same reason without another decode). Open claims are at
    most the files in flight, so this does not grow with the folder."""

    def __init__(self, catalog: Catalog, models: Sequence[ModelInfo]) -> None:
        self._catalog, self._models = catalog, list(models)
        self._lock = threading.Lock()
        self._claimed: dict[str, str] = {}  # content hash -> path of the file decoding it
        self._owned: dict[str, str] = {}  # path -> the content it claimed
        self._failed: dict[str, str] = {}
        self._abandoned: dict[str, str] = {}  # path -> why the run stopped waiting for it

    def classify(self, files: Sequence[tuple[str, str]]) -> list[Answer]:
        """For each ``(content hash, path)``: what the run knows of the content, or ``(None,
        None)`` when ``path`` now owns the content and must decode it. One catalog query for
        all of them: a Ray decode task asks once per batch."""
        with self._lock:
            open_hashes = [h for h, _path in files if h not in self._claimed and h not in self._failed]
            known = self._catalog.hashes_with_vectors(self._models, open_hashes) if open_hashes else set()
            return [self._classify_one(content_hash, path, known) for content_hash, path in files]

    def _classify_one(self, content_hash: str, path: str, known: set[str]) -> Answer:
        if path in self._abandoned:  # its thread came back after the run gave up on it
            return ContentState.FAILED, self._abandoned[path]
        if self._claimed.get(content_hash, path) != path:  # its own claim: a retried file
            return ContentState.CLAIMED, None
        if content_hash in self._failed:
            return ContentState.FAILED, self._failed[content_hash]
        if content_hash in known:
            return ContentState.INDEXED, None
        self._release(path)  # read again (a retried Ray task), it may hold other bytes now
        self._claimed[content_hash] = path
        self._owned[path] = content_hash
        return None, None

    def release(self, path: str) -> None:
        """``path`` failed before it was hashed (read again and unreadable now): its
        earlier claim, if any, is open again."""
        with self._lock:
            self._release(path)

    def _release(self, path: str) -> None:
        owned = self._owned.pop(path, None)
        if owned is not None and self._claimed.get(owned) == path:
            del self._claimed[owned]

    def settle(self, content_hash: str, error: str | None = None) -> None:
        """Close ``content_hash``'s claim: committed (``error`` None) or failed."""
        with self._lock:
            self._owned.pop(self._claimed.pop(content_hash, ""), None)
            if error is not None:
                self._failed[content_hash] = error

    def abandon(self, path: str, reason: str) -> str | None:
        """The run gave up waiting for ``path``: the content it claimed (returned, if any)
        fails with ``reason``, and if its thread ever comes back it claims nothing."""
        with self._lock:
            self._abandoned[path] = reason
            owned = self._owned.get(path)
            self._release(path)
            if owned is not None:
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
    """Reads, hashes, routes and (on the CPU) decodes candidates; never raises. Each file
    gets ``timeout_s`` in all for its read and its decode."""

    contents: ClaimRegistry
    recipes: tuple[Preprocess, ...]
    max_file_size: int
    max_pixels: int
    draft: bool
    timeout_s: float
    gpu_route: Callable[[bytes], str | None] | None = None  # None: no GPU decoding
    #: Called with each file decoded here and its picture (``index_folders``' ``on_picture``).
    on_picture: OnPicture | None = None

    def __call__(self, candidate: Candidate) -> Outcome:
        return self.process([candidate])[0]

    def process(self, candidates: Sequence[Candidate]) -> list[Outcome]:
        """Read and hash each file, ask ``contents`` about all of them at once, then decode
        those that own a new content."""
        outcomes: dict[int, Outcome] = {}
        reads = []  # (position, candidate, content hash, bytes, seconds spent reading)
        for i, candidate in enumerate(candidates):
            if candidate.found.problem:  # not read: it could not be recorded as it is
                outcomes[i] = Failed(candidate, candidate.found.problem)
                continue
            started = time.monotonic()
            read = self._read(candidate)
            if read.error:
                outcomes[i] = Failed(candidate, read.error)
            else:
                reads.append((i, candidate, read.content_hash, read.data, time.monotonic() - started))
        answers = self.contents.classify([(content_hash, candidate.path) for _i, candidate, content_hash, *_ in reads])
        for (i, candidate, content_hash, data, spent), (state, reason) in zip(reads, answers, strict=True):
            outcomes[i] = (
                _known(candidate, content_hash, state, reason)
                if state is not None
                else self._decode(candidate, content_hash, data, self.timeout_s - spent)
            )
        return [outcomes[i] for i in range(len(candidates))]

    def _read(self, candidate: Candidate) -> FileBytes:
        try:
            with time_limit(self.timeout_s):
                return read_file(candidate.path, self.max_file_size)
        except TimeLimitExceeded:
            return FileBytes(error=too_slow(self.timeout_s))

    def _decode(self, candidate: Candidate, content_hash: str, data: bytes, seconds_left: float) -> Outcome:
        if self.gpu_route is not None and self.gpu_route(data) is None:
            return ForDevice(candidate, content_hash, data)
        try:
            with time_limit(max(seconds_left, 0.001)):
                seen = None if self.on_picture is None else partial(self.on_picture, candidate.found)
                decoded = decode_bytes(candidate.path, data, self.recipes, self.max_pixels, self.draft, seen)
        except TimeLimitExceeded:
            return Failed(candidate, too_slow(self.timeout_s), content_hash)
        if decoded.error:
            return Failed(candidate, decoded.error, content_hash)
        return DecodedContent(candidate, content_hash, decoded)


def _known(candidate: Candidate, content_hash: str, state: ContentState, reason: str | None) -> Outcome:
    """The outcome of a file whose content the run's claims already know: no decode."""
    if state is ContentState.INDEXED:
        return AlreadyIndexed(candidate, content_hash)
    if state is ContentState.CLAIMED:
        return CopyOfClaimed(candidate, content_hash)
    return Failed(candidate, reason or "unknown error", content_hash)
