"""What reading one file led to: one type per fate (``Outcome``), so the code that handles
a fate gets exactly the facts it has. A failure has a reason and, if the file was read,
its content; decoded content has its pixels; content embedded on a Ray actor has its
vectors. (One record with optional fields left every reader to know which fields each
kind filled, and to assert it.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dreamsearch.images import Decoded
from dreamsearch.scan import ScannedFile

if TYPE_CHECKING:  # Ray's workers import this module and read no catalog
    from dreamsearch.catalog import StoredFile


@dataclass(frozen=True)
class Candidate:
    """A new or changed file (or one whose content lacks a model's vector)."""

    found: ScannedFile  # relpath inside its root
    previous: StoredFile | None
    path: str


@dataclass(frozen=True)
class Failed:
    """Could not be read or decoded. ``content_hash``: its content, if it was read (byte
    copies of it fail with the same reason); ``gave_up``: its thread did not answer in
    time (three in a row and the folder has stopped answering)."""

    candidate: Candidate
    error: str
    content_hash: str | None = None
    gave_up: bool = False


@dataclass(frozen=True)
class AlreadyIndexed:
    """Content with every model's vectors in the catalog: recorded without decoding, as a
    copy or a move, or as the same file whose times alone changed (``touched``)."""

    candidate: Candidate
    content_hash: str

    @property
    def touched(self) -> bool:
        """The path held these very bytes: not a copy, not a change."""
        previous = self.candidate.previous
        return previous is not None and previous.content_hash == self.content_hash


@dataclass(frozen=True)
class CopyOfClaimed:
    """A byte copy of content that another file of this run claimed and is decoding: it
    shares that file's vectors, or its failure, once that file's outcome is known."""

    candidate: Candidate
    content_hash: str


@dataclass(frozen=True)
class ForDevice:
    """New content, a baseline JPEG left whole for the batched decoder in the model thread
    (``device_decode``)."""

    candidate: Candidate
    content_hash: str
    data: bytes


@dataclass(frozen=True)
class DecodedContent:
    """New content decoded into each model's input pixels, waiting for the model."""

    candidate: Candidate
    content_hash: str
    decoded: Decoded


@dataclass(frozen=True)
class EmbeddedContent:
    """New content decoded and embedded where it was read (a Ray task and actor): the
    picture's facts without its pixels, and each model's vector."""

    candidate: Candidate
    content_hash: str
    decoded: Decoded
    vectors: tuple[np.ndarray, ...]


#: New content ready for its vectors.
Ready = DecodedContent | EmbeddedContent
#: New content, in the batch that waits for the model.
NewContent = ForDevice | DecodedContent | EmbeddedContent
Outcome = Failed | AlreadyIndexed | CopyOfClaimed | ForDevice | DecodedContent | EmbeddedContent
