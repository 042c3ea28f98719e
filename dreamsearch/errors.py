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
