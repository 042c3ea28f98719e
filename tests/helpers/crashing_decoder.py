"""A JPEG that kills the process decoding it, as a native decoder crash would: installed
in Ray's worker processes only (``worker_process_setup_hook``), never in the test's own."""

from __future__ import annotations

import os

from PIL import JpegImagePlugin

#: A JPEG whose comment holds this makes the worker decoding it abort.
MARKER = b"crash the decoder"


def install() -> None:
    opened = JpegImagePlugin.JpegImageFile._open

    def open_or_crash(self) -> None:
        opened(self)
        if MARKER in self.info.get("comment", b""):
            os.abort()

    JpegImagePlugin.JpegImageFile._open = open_or_crash
