"""The digest chain of the vector log: one value that stands for every change a model's
vectors went through up to a log position (see migration 0003 and docs/catalog.md)."""

from __future__ import annotations

import hashlib


def next_chain(previous: str, op: str, content_id: int, content_hash: str) -> str:
    """The chain value after appending ``op`` of ``content_id`` (whose bytes hash to
    ``content_hash``) to a log whose last value was ``previous`` (``""`` for none)."""
    return hashlib.sha256(f"{previous}|{op}|{content_id}|{content_hash}".encode()).hexdigest()
