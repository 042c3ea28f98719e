"""Decode baseline JPEGs in batches with ``torchvision.io.decode_jpeg`` and resize them on
the model's device, so that on CUDA the CPU decode threads only see the other files.

``decode_jpeg`` rather than nvImageCodec: it is no extra dependency, and the same call has
a CPU backend (libjpeg-turbo), so CI without a GPU runs this exact code with ``"cpu"``.
torchvision 0.29 deprecates its image decoders in favour of TorchCodec (a
DeprecationWarning per call, hidden outside tests); revisit when they are removed.
torch and torchvision are imported inside the functions that need them: the CLI must
start fast.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from dreamsearch.errors import DreamsearchError
from dreamsearch.images import DEFAULT_MAX_PIXELS, Preprocess

#: PIL resample constants the device resize can reproduce (antialiased, Pillow's kernels).
_MODES: dict[int, str] = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}

Result = tuple[int, int, tuple[np.ndarray, ...]] | str

#: Pictures whose shorter side is below this go to the CPU. nvJPEG upsamples chroma
#: differently from libjpeg, which shows when a picture is shrunk little or enlarged:
#: measured on an H100 against the CPU path, 640x480 max 5-6/255 (mean 0.44), 200x150 max
#: 14/255 (mean 1.3); 1600x1200 and larger max 2/255 (mean 0.33). Small files are cheap to
#: decode on the CPU anyway.
MIN_DEVICE_SIDE = 1000


def gpu_route(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """``None`` if the GPU decoder may take this file, else why it goes to the CPU.

    Only the header is read. The CPU path (Pillow) is the reference, so everything the
    device decode would do differently goes there: other formats, colour modes other than
    RGB, progressive scans, EXIF rotation (the CUDA paths differ in EXIF handling), small
    pictures (``MIN_DEVICE_SIDE``) and oversized ones (refused with their exact reason by
    the CPU path). MPO is a JPEG
    with extra pictures (phone gain maps); its first picture is an ordinary JPEG.
    """
    if not data.startswith(b"\xff\xd8"):
        return "not a JPEG"
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("JPEG", "MPO"):
                return f"format {img.format}"
            if img.mode != "RGB":
                return f"mode {img.mode}"
            if img.info.get("progressive") or img.info.get("progression"):
                return "progressive"
            orientation = img.getexif().get(0x0112, 1)
            if orientation not in (1, None):
                return f"EXIF orientation {orientation}"
            width, height = img.size
            if min(width, height) < MIN_DEVICE_SIDE:
                return f"{width}x{height} is small: decoded on the CPU"
            if width * height > max_pixels:
                return f"{width}x{height} pixels is over the limit"
    except Exception as exc:  # noqa: BLE001 - any parse failure just means "CPU decides"
        return f"header unreadable: {_one_line(exc)}"
    return None


class JpegBatchDecoder:
    """Decode a list of JPEG blobs on ``device`` and preprocess each for every model.

    Concurrent CUDA streams can corrupt hardware-decoded pixels on H100
    (pytorch/vision#9606, meta-pytorch/torchcodec#1634): use one decoder from one thread
    only; it synchronises the device after decoding, before any result is read.
    """

    def __init__(self, device: str = "cuda") -> None:
        import torch
        import torchvision.io  # noqa: F401 - fail here, not mid-batch, if it is missing

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise DreamsearchError("--gpu-decode needs a CUDA device, and none is available")
        self.device = device
        self.on_cuda = str(device).startswith("cuda")

    def decode(self, blobs: list[bytes], recipes: tuple[Preprocess, ...]) -> list[Result]:
        """``(width, height, pixels)`` per blob, ``pixels[i]`` made with ``recipes[i]``, or
        a one-line error; the indexer decodes failures on the CPU for the exact reason."""
        unsupported = [recipe.resample for recipe in recipes if recipe.resample not in _MODES]
        if unsupported:
            return [f"resample {unsupported[0]} is not supported on the device"] * len(blobs)
        modes = [_MODES[recipe.resample] for recipe in recipes]
        images = self._decode_all(blobs)
        results: list[Result] = []
        for image in images:
            if isinstance(image, str):
                results.append(image)
                continue
            try:
                pixels = tuple(_preprocess(image, r, m) for r, m in zip(recipes, modes, strict=True))
            except Exception as exc:  # noqa: BLE001 - one bad picture never fails the batch
                results.append(f"device resize failed: {_one_line(exc)}")
                continue
            results.append((int(image.shape[-1]), int(image.shape[-2]), pixels))
        return results

    def _decode_all(self, blobs: list[bytes]) -> list[Any]:
        """One batched call; if it raises, each blob alone, so a bad file fails only itself."""
        if not blobs:
            return []
        try:
            return self._decode_jpeg([_tensor(blob) for blob in blobs])
        except Exception:  # noqa: BLE001 - retried one by one below
            pass
        images: list[Any] = []
        for blob in blobs:
            try:
                images.append(self._decode_jpeg([_tensor(blob)])[0])
            except Exception as exc:  # noqa: BLE001
                images.append(f"device JPEG decode failed: {_one_line(exc)}")
        return images

    def _decode_jpeg(self, tensors: list[Any]) -> list[Any]:
        """Overridable seam (tests inject failures here)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
        return list(images)


def _tensor(blob: bytes) -> Any:
    import torch

    if not blob:
        return torch.empty(0, dtype=torch.uint8)  # decode_jpeg then gives a clear error
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)  # copy: bytes are read-only


def _preprocess(image: Any, recipe: Preprocess, mode: str) -> np.ndarray:
    """``Preprocess`` on the device: squash, or short side to ``resize`` then a central
    crop, with the same rounding; antialiased kernels follow Pillow's (bicubic a=-0.5)."""
    import torch
    from torch.nn.functional import interpolate

    height, width = int(image.shape[-2]), int(image.shape[-1])
    if not recipe.resize:
        new_w = new_h = recipe.size
    elif width <= height:
        new_w, new_h = recipe.resize, int(recipe.resize * height / width)
    else:
        new_w, new_h = int(recipe.resize * width / height), recipe.resize
    resized = interpolate(image[None].float(), size=(new_h, new_w), mode=mode, antialias=True, align_corners=False)[0]
    left = int(round((new_w - recipe.size) / 2.0))
    top = int(round((new_h - recipe.size) / 2.0))
    crop = resized[:, top : top + recipe.size, left : left + recipe.size]
    return crop.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
