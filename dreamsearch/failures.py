"""Whether a file's failure can pass without the file changing.

A failure is **permanent** when the bytes themselves are the problem (not an image,
truncated, a decompression bomb): reading them again gives the same answer, so the file
waits until it changes (or ``index --retry-failed``). It is **transient** when the cause
lies outside the bytes and can be fixed while the file stays as it is: a permission, the
memory or time available, an I/O error, a size limit the user can raise. Transient
failures are retried on the next runs, until the same reason came back
``TRANSIENT_TRIES`` runs in a row.

The reasons are the one-line texts that ``reading`` and ``images`` write; each
transient one starts with, or contains, one of the phrases below.
"""

from __future__ import annotations

PERMANENT = "permanent"
TRANSIENT = "transient"
#: Runs in a row a transient failure is tried before its file waits until it changes.
TRANSIENT_TRIES = 3

#: Phrases of the reasons whose cause can pass (see ``reading.read_failure``,
#: ``images.too_slow``, the memory errors, ``--max-file-size`` and a failed commit).
_TRANSIENT_PHRASES = (
    "permission denied",
    "cannot read:",
    "cannot list or open:",
    "vanished before it could be read",
    "not enough memory",
    "took longer than",
    "over the file size limit",
    "could not be recorded:",
)


def failure_kind(reason: str) -> str:
    """``TRANSIENT`` or ``PERMANENT`` for a recorded reason."""
    return TRANSIENT if any(phrase in reason for phrase in _TRANSIENT_PHRASES) else PERMANENT
