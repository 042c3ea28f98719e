"""Outcomes on their way into the catalog: each file's outcome is queued as what it needs
(new content waits for the model, a byte copy for its original, the rest is recorded as
it is), and a commit embeds the batch a step at a time and writes the files, contents
and vectors in one transaction, so a killed run loses at most the batch in flight."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from dreamsearch.catalog import FileEntry, RootPlace, path_to_db
from dreamsearch.indexer.device_decode import DeviceDecoding
from dreamsearch.indexer.embedding import RunModels
from dreamsearch.indexer.outcomes import (
    AlreadyIndexed,
    CopyOfClaimed,
    DecodedContent,
    EmbeddedContent,
    Failed,
    ForDevice,
    NewContent,
    Outcome,
    Ready,
)
from dreamsearch.indexer.pipeline import ClaimRegistry
from dreamsearch.indexer.writer import CatalogWriter, entry

#: Files recorded without decoding (copies, moves, touched files) are committed this many
#: at a time, or after ``COMMIT_EVERY_S``, whichever comes first.
REUSE_BATCH = 500
COMMIT_EVERY_S = 2.0


@dataclass
class Pending:
    """What one folder's stream has produced and not committed yet, and the claims it was
    classified by."""

    place: RootPlace
    contents: ClaimRegistry
    batch: list[NewContent] = field(default_factory=list)  # new contents, to embed
    files: list[FileEntry] = field(default_factory=list)  # recorded without decoding
    copies: dict[str, list[CopyOfClaimed]] = field(default_factory=lambda: defaultdict(list))  # by awaited content
    since: float = field(default_factory=time.monotonic)

    def files_due(self) -> bool:
        """Whether the files recorded without decoding should be committed now."""
        return len(self.files) >= REUSE_BATCH or (bool(self.files) and time.monotonic() - self.since > COMMIT_EVERY_S)


class Committer:
    """Takes outcomes into ``Pending`` batches and commits them; keeps the report's counts.
    ``reused``: contents recorded as copies or moves (a move if its old path is gone)."""

    def __init__(
        self, writer: CatalogWriter, models: RunModels, decoding: DeviceDecoding, stop: threading.Event
    ) -> None:
        self.writer, self.models, self.decoding, self.stop = writer, models, decoding, stop
        self.report = writer.report
        self.reused: list[str] = []

    def take(self, pending: Pending, outcome: Outcome) -> None:
        """Queue what one file's outcome needs (a byte copy waits for its original)."""
        if isinstance(outcome, CopyOfClaimed):
            self._take_copy(pending, outcome)
            return
        if isinstance(outcome, ForDevice | DecodedContent | EmbeddedContent):  # counted when embedded (or failed)
            pending.batch.append(outcome)
            self.report.waiting = len(pending.batch)
            return
        self._count_found(outcome)
        if isinstance(outcome, Failed):
            self._fail_with_copies(pending, outcome)
            return
        if not outcome.touched:
            self.report.copied += 1  # or moved: settled at the end, once all gone files are known
            self.reused.append(outcome.content_hash)
        pending.files.append(entry(outcome.candidate.found, outcome.content_hash))

    def _take_copy(self, pending: Pending, outcome: CopyOfClaimed) -> None:
        """A byte copy of a content another file claimed: it shares that file's vectors or
        its failure, once that file's outcome is known."""
        content_hash = outcome.content_hash
        if pending.contents.is_claimed(content_hash):
            pending.copies[content_hash].append(outcome)
            return
        self._count_found(outcome)
        if (reason := pending.contents.failure(content_hash)) is not None:
            self.writer.record_failure(pending.place.id, outcome.candidate.found, outcome.candidate.path, reason)
        else:  # committed since it was read
            self.report.copied += 1
            pending.files.append(entry(outcome.candidate.found, content_hash))

    def _fail_with_copies(self, pending: Pending, outcome: Failed) -> None:
        """Record a file that failed, settle its content's claim as failed, and fail the
        byte copies waiting for it."""
        root_id, reason = pending.place.id, outcome.error
        self.writer.record_failure(root_id, outcome.candidate.found, outcome.candidate.path, reason)
        if not outcome.content_hash:
            pending.contents.release(outcome.candidate.path)  # a retried Ray task: it may have claimed before
        else:
            pending.contents.settle(outcome.content_hash, reason)
            for copy in pending.copies.pop(outcome.content_hash, []):
                self._count_found(copy)
                self.writer.record_failure(root_id, copy.candidate.found, copy.candidate.path, reason)

    def commit(self, pending: Pending, embed: bool = True) -> None:
        """Commit the files recorded without decoding and, with ``embed``, the batch (what
        of it is embedded: see ``_embed_batch``) and the byte copies of its contents, in one
        transaction."""
        good, vectors = self._embed_batch(pending) if embed else ([], {})
        copies = [c for o in good for c in pending.copies.pop(o.content_hash, [])]
        files = pending.files + [entry(o.candidate.found, o.content_hash, o.decoded) for o in good]
        files += [entry(c.candidate.found, c.content_hash) for c in copies]
        lost = self.writer.record(pending.place, files, vectors if good else None) if files else {}
        for outcome in good:
            pending.contents.settle(outcome.content_hash, lost.get(path_to_db(outcome.candidate.found.relpath)))
        for copy in copies:
            self._count_found(copy)
        self.report.embedded += sum(path_to_db(o.candidate.found.relpath) not in lost for o in good)
        self.report.copied += sum(path_to_db(c.candidate.found.relpath) not in lost for c in copies)
        pending.files, pending.since = [], time.monotonic()
        self.report.waiting = len(pending.batch)
        if good and self.writer.saves.due():
            self.writer.save_indexes(self.models.infos)

    def finish(self, pending: Pending) -> None:
        """The folder's last commit (after Ctrl-C: only what the model already embedded),
        and the byte copies still waiting said not indexed."""
        self.commit(pending)
        self.decoding.stream_ended()
        for copy in (c for waiting in pending.copies.values() for c in waiting):
            # Its original was read again by a retried Ray task and had changed: not recorded,
            # so the next run indexes it.
            self.report.failures.append(
                (
                    copy.candidate.path,
                    "not indexed in this run: the file it copies changed while being read; the next run indexes it",
                )
            )

    def _embed_batch(self, pending: Pending) -> tuple[list[Ready], dict[str, dict[str, np.ndarray]]]:
        """The batch's files that decode, embedded a step at a time (``RunModels.step_size``),
        and their vectors by model. After Ctrl-C (or ``stop``) no model call starts: the
        files not embedded yet are left for the next run (their claims reopened, the byte
        copies waiting for them not recorded), so a stop waits for one step, not the batch."""
        todo, pending.batch = pending.batch, []
        good: list[Ready] = []
        vectors: dict[str, dict[str, np.ndarray]] = {source.name: {} for source in self.models.sources}
        while todo and not (self.stop.is_set() and not isinstance(todo[0], EmbeddedContent)):
            size = self.models.step_size()
            step, todo = todo[:size], todo[size:]
            decoded = []
            for outcome in self.decoding.decode(step):
                self._count_found(outcome)
                if isinstance(outcome, Failed):
                    self._fail_with_copies(pending, outcome)
                else:
                    decoded.append(outcome)
            for name, found in self.models.embed_lacking(decoded).items():
                vectors[name].update(found)
            good += decoded
        for waiting in todo:
            pending.contents.release(waiting.candidate.path)
            pending.copies.pop(waiting.content_hash, None)
        return good, vectors

    def _count_found(self, outcome: Outcome) -> None:
        """Count a file as new, changed or unchanged once its fate is recorded."""
        previous = outcome.candidate.previous
        if isinstance(outcome, AlreadyIndexed) and outcome.touched:
            self.report.unchanged += 1
        elif previous is None:
            self.report.new += 1
        elif previous.content_hash != outcome.content_hash:
            self.report.changed += 1
