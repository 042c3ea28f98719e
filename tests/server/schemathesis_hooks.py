"""What JSON Schema cannot say about this API, told to Schemathesis: loaded through
``$SCHEMATHESIS_HOOKS`` by the runs of ``tests/server/test_schema.py``.

- An upload is a picture. The schema can only say "bytes"; random bytes get 415 (tested
  in test_http_api.py), so valid uploads are real pictures of every format the decoder takes,
  and the search, embed and compare answers are checked against their schemas too.
- The models of a comparison are different ones ("a,a" is one model: 400).
- A form field is never an empty list: that sends no part at all (the field is absent).
- An index job names only the test's own folders: a generated path that exists on this
  machine ("/", "/tmp") is replaced by the served photo folder just before it is sent, so
  a run never reads anything else, whatever the server's own folder rules are.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
PHOTOS = os.environ.get("DREAMSEARCH_SCHEMA_PHOTOS", "")


@st.composite
def pictures(draw) -> bytes:
    """A small picture of a random size, colour and format."""
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
    picture = Image.new("RGB", size, colour)
    picture.putpixel((0, 0), (255 - colour[0], 255 - colour[1], 255 - colour[2]))
    buffer = io.BytesIO()
    picture.save(buffer, draw(st.sampled_from(FORMATS)))
    return buffer.getvalue()


schemathesis.openapi.format("binary", pictures())


@schemathesis.hook("filter_body").apply_to(path="/api/compare")
def different_models(context, body) -> bool:
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, str):
        return True
    names = [name.strip() for name in models.split(",")]
    return len(names) == len(set(names))


@schemathesis.hook("filter_body").apply_to(path_regex="^/api/(search|embed|compare)$")
def no_empty_list_in_a_form(context, body) -> bool:
    """A multipart field given as an empty list is not sent at all (there is no part to
    send), so the server sees the field absent, which is valid: not a negative case."""
    return not (isinstance(body, dict) and any(value == [] for value in body.values()))


@schemathesis.hook("before_call").apply_to(path="/api/index", method="POST")
def only_the_test_folders(context, case, kwargs) -> None:
    """Every phase calls through here (generation hooks are not applied to all of them)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("folders"), list) and PHOTOS:
        body["folders"] = [PHOTOS if _elsewhere(f) else f for f in body["folders"]]


def _elsewhere(folder) -> bool:
    """An existing folder outside the served photos (the test's only folder)."""
    if not isinstance(folder, str) or "\x00" in folder:
        return False
    try:
        path = Path(folder)
        return path.is_dir() and not path.resolve().is_relative_to(Path(PHOTOS).resolve())
    except (OSError, ValueError):
        return False
