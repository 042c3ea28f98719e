"""JSON answers that carry any file name.

On Linux a file name is bytes and need not be UTF-8: Python holds ``caf\\xe9.jpg`` as the
lone surrogate ``caf\\udce9.jpg``, which a strict UTF-8 encoder refuses, so every result
page that named such a file, and ``/api/duplicates``, gave 500 (issue 21). Here each such
byte becomes the JSON escape ``\\udcXX``, exactly as the CLI's ``--json`` writes it
(docs/output.md): ``os.fsencode`` of the parsed string gives back the name's bytes.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse


class JSONDocument(JSONResponse):
    """UTF-8 JSON, non-ASCII text as it is, a name's undecodable bytes as ``\\udcXX``."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")  # only lone surrogates need it: \udcXX
