"""The batched JPEG decoder, run with torchvision's CPU backend (the same call as on CUDA;
``DREAMSEARCH_TEST_DECODE_DEVICE=cuda`` runs it on a GPU):
which files it may take, and that its pixels agree with the Pillow path the indexer uses."""

from __future__ import annotations

import inspect
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dreamsearch.images import Preprocess, decode
from dreamsearch.indexer.gpu_decode import MIN_DEVICE_SIDE, JpegBatchDecoder, gpu_route
from tests.helpers.images import photo_like

SQUASH = Preprocess(224)
CROP = Preprocess(224, 256, Image.BILINEAR)
SIZES = [(640, 480), (1600, 1200), (3000, 2000), (480, 640), (200, 150)]


def encode(img: Image.Image, fmt: str = "JPEG", **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64), **save) -> bytes:
    return encode(Image.new("RGB", size, colour), quality=95, **save)


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    return [encode(photo_like(w, h, seed), quality=90) for seed, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def decoder(decode_device) -> JpegBatchDecoder:
    return JpegBatchDecoder(decode_device)


# --- routing -------------------------------------------------------------------------

BIG = (1200, MIN_DEVICE_SIDE)  # the smallest size the device takes is 1000x1000


def test_baseline_rgb_jpeg_goes_to_the_device():
    assert gpu_route(encode(photo_like(*BIG, 0))) is None


def test_small_pictures_go_to_the_cpu():
    for width, height in [(MIN_DEVICE_SIDE - 1, 1400), (1400, MIN_DEVICE_SIDE - 1), (64, 48)]:
        assert "small" in gpu_route(encode(photo_like(width, height, 0)))


def test_mpo_goes_to_the_device():
    data = encode(photo_like(*BIG, 0), "MPO", save_all=True, append_images=[photo_like(32, 24, 1)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert gpu_route(data) is None


def _exif6(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, exif=exif)


@pytest.mark.parametrize(
    "make",
    [
        lambda img: encode(img, progressive=True),
        lambda img: encode(img.convert("L")),
        lambda img: encode(img.convert("CMYK")),
        _exif6,
        lambda img: encode(img, "PNG"),
        lambda img: b"\xff\xd8 garbage after a JPEG signature",
        lambda img: b"not an image at all",
        lambda img: b"",
    ],
    ids=["progressive", "greyscale", "cmyk", "exif-rotated", "png", "broken-jpeg", "garbage", "empty"],
)
def test_everything_else_goes_to_the_cpu(make):
    reason = gpu_route(make(photo_like(*BIG, 0)))
    assert isinstance(reason, str) and reason and "\n" not in reason and "small" not in reason


def test_oversized_goes_to_the_cpu():
    data = encode(photo_like(*BIG, 0))
    assert gpu_route(data, max_pixels=BIG[0] * BIG[1]) is None
    assert "over the limit" in gpu_route(data, max_pixels=BIG[0] * BIG[1] - 1)


def test_module_import_does_not_import_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('gpu_decode', {inspect.getfile(gpu_route)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- agreement with the CPU (Pillow) path ----------------------------------------------

# Measured (torchvision 0.29.1 CPU decode_jpeg, torch 2.14.1, Pillow 12; /255 units,
# per image 640x480, 1600x1200, 3000x2000, 480x640, 200x150):
#   squash 224, vs draft 448: max 1,2,2,1,1  mean 0.146 0.261 0.251 0.124 0.197
#   squash 224, vs full:      max 1,1,1,1,1  mean 0.146 0.090 0.071 0.124 0.197
#   crop 256/224 bilinear, vs draft 448: max 1,2,2,1,1  mean 0.142 0.351 0.316 0.140 0.187
#   crop 256/224 bilinear, vs full:      max 1,1,1,1,1  mean 0.142 0.087 0.066 0.140 0.187
# (The draft decode scales in the DCT domain, hence the larger gap on the big photos.)
# On CUDA (H100, torchvision 0.26 nvJPEG) chroma is upsampled differently from libjpeg:
# draft: 1600x1200 max 2 mean 0.23/0.33, 3000x2000 max 2 mean 0.25/0.32 (squash/crop);
# full: max 1, mean 0.08-0.15. The small sizes differ more (640x480 max 6, 200x150 max 14,
# mean 1.3), which is why gpu_route sends pictures under MIN_DEVICE_SIDE to the CPU; the
# decoder is checked here on all sizes it is given, against the limits of the ones it gets.


@pytest.mark.parametrize("recipe", [SQUASH, CROP], ids=["squash", "crop"])
@pytest.mark.parametrize("draft, max_limit, mean_limit", [(448, 3, 0.6), (0, 2, 0.3)], ids=["draft", "full"])
def test_pixels_agree_with_the_cpu_path(corpus, decoder, recipe, draft, max_limit, mean_limit):
    results = decoder.decode(corpus, (recipe,))
    routed = 0
    for data, (w, h), result in zip(corpus, SIZES, results, strict=True):
        assert not isinstance(result, str), result
        width, height, (pixels,) = result
        assert (width, height) == (w, h)
        assert pixels.dtype == np.uint8 and pixels.shape == (224, 224, 3)
        reference = recipe(decode("photo.jpg", data=data, draft_size=draft).image)
        diff = np.abs(pixels.astype(np.int16) - reference.astype(np.int16))
        print(f"{decoder.device} {recipe} {w}x{h} draft={draft}: max {diff.max()}/255 mean {diff.mean():.3f}/255")
        if gpu_route(data) is None:
            routed += 1
            assert diff.max() <= max_limit
            assert diff.mean() < mean_limit
    assert routed == 2


def test_every_recipe_is_applied(corpus, decoder):
    ((width, height, (squash, crop)),) = decoder.decode(corpus[1:2], (SQUASH, CROP))
    assert (width, height) == SIZES[1]
    picture = decode("photo.jpg", data=corpus[1]).image
    assert np.abs(squash.astype(int) - SQUASH(picture)).max() <= 2
    assert np.abs(crop.astype(int) - CROP(picture)).max() <= 2


# --- batches ---------------------------------------------------------------------------

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 220, 220), (128, 128, 128)]


def _assert_colour(result, colour):
    assert not isinstance(result, str), result
    _, _, (pixels,) = result
    assert np.abs(pixels.reshape(-1, 3).astype(int) - colour).max() <= 4


def test_results_keep_input_order(decoder):
    sizes = [(96, 64), (50, 80), (300, 200), (64, 64), (31, 17), (640, 480)]
    blobs = [solid(c, s) for c, s in zip(COLOURS, sizes, strict=True)]
    results = decoder.decode(blobs, (SQUASH,))
    assert [r[:2] for r in results] == sizes
    for result, colour in zip(results, COLOURS, strict=True):
        _assert_colour(result, colour)


def test_bad_blobs_fail_alone(decoder):
    blobs = [solid(c) for c in COLOURS[:4]]
    blobs[1:1] = [b"garbage, not a JPEG"]
    blobs.append(b"")
    results = decoder.decode(blobs, (SQUASH,))
    assert len(results) == 6
    for index in (1, 5):
        assert isinstance(results[index], str) and "\n" not in results[index]
    for result, colour in zip(results[:1] + results[2:5], COLOURS[:4], strict=True):
        _assert_colour(result, colour)


class FlakyDecoder(JpegBatchDecoder):
    """Fails every device decode call that contains a blob marked with a JPEG comment,
    as a device decoder does on a file it does not support (the file itself is fine)."""

    MARK = b"FLAKY"

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self.calls: list[int] = []

    def _decode_jpeg(self, tensors):
        self.calls.append(len(tensors))
        if any(self.MARK in t.numpy().tobytes() for t in tensors):
            raise RuntimeError("injected failure\nsecond line")
        return super()._decode_jpeg(tensors)


def test_injected_failure_leaves_the_others_decoded(decode_device):
    flaky = FlakyDecoder(decode_device)
    blobs = [solid(c) for c in COLOURS[:3]]
    blobs.insert(2, solid((0, 0, 0), comment=FlakyDecoder.MARK))
    results = flaky.decode(blobs, (SQUASH,))
    assert flaky.calls == [4, 1, 1, 1, 1]  # the batch, then each blob alone
    assert results[2] == "device JPEG decode failed: injected failure"
    for result, colour in zip(results[:2] + results[3:], COLOURS[:3], strict=True):
        _assert_colour(result, colour)


def test_unsupported_resample_is_an_error_per_blob(decoder):
    results = decoder.decode([solid(COLOURS[0])] * 2, (Preprocess(224, 0, Image.LANCZOS),))
    assert len(results) == 2 and all(isinstance(r, str) for r in results)


def test_empty_batch(decoder):
    assert decoder.decode([], (SQUASH,)) == []
