"""Errors that reach the user as one clear line instead of a traceback."""

from __future__ import annotations

import os


class DreamsearchError(Exception):
    """An expected failure (bad input, missing weights, ...) with a message fit for a user."""


class ImageError(DreamsearchError):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class PixelLimitError(ImageError):
    """A picture with more pixels than allowed (a decompression bomb?)."""


class NotFoundError(DreamsearchError):
    """Something asked for by id or path that the library does not hold (HTTP 404)."""


class ChangedOnDiskError(NotFoundError):
    """A file named by path or id is in the library, but is not on disk as it was
    indexed: its stored vector is of another picture (HTTP 404, as a file that is gone)."""


class WeightsError(DreamsearchError):
    """Model weights that are missing, incomplete or unreadable."""


def checkpoint_problem(exc: BaseException) -> str:
    """What ``torch.load`` or ``load_state_dict`` found wrong in a checkpoint, on one line of
    at most 200 characters: the latter puts a header line over its findings and names every
    missing tensor (~320 for a stray ResNet50 checkpoint)."""
    lines = (line.strip() for line in str(exc).splitlines())
    found = next((line for line in lines if line and not line.startswith("Error(s) in loading")), "")
    return (found or type(exc).__name__)[:200]
