"""Decoding rules shared by every command: orientation, modes, and clear refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dreamsearch.errors import ImageError
from dreamsearch.images import open_rgb, resize_center_crop, resize_squash
from tests.helpers.images import photo_like


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "orientation, transpose",
    [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180)],
)
def test_exif_orientation_is_applied(tmp_path, orientation, transpose):
    img = photo_like(120, 80, 7)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(img, tmp_path / "rot.png", exif=exif)
    decoded = open_rgb(path)
    assert np.array_equal(np.asarray(decoded), np.asarray(img.transpose(transpose)))


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 0), (0, 0, 255, 128))  # half-transparent blue
    pixels = np.asarray(open_rgb(_save(rgba, tmp_path / "a.png")))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 1]) == (127, 127, 255)
    assert tuple(pixels[5, 5]) == (255, 0, 0)


def test_palette_with_transparency_uses_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((1, 1), 1)
    path = _save(img, tmp_path / "p.png", transparency=0)
    pixels = np.asarray(open_rgb(path))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[1, 1]) == (10, 200, 30)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    path = _save(Image.fromarray(ramp), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(open_rgb(path))
    assert pixels.shape == (16, 16, 3)
    assert np.array_equal(pixels[..., 0], np.arange(256).reshape(16, 16))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(photo_like(64, 48, 1).convert("CMYK"), tmp_path / "cmyk.jpg")
    decoded = open_rgb(path)
    assert decoded.mode == "RGB" and decoded.size == (64, 48)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixels = np.asarray(open_rgb(path))
    assert pixels[4, 4, 0] > 200 and pixels[4, 4, 1] < 50


def test_heic_is_read(tmp_path):
    from pillow_heif import register_heif_opener

    register_heif_opener()
    path = _save(photo_like(64, 48, 2), tmp_path / "photo.heic", quality=90)
    assert open_rgb(path).size == (64, 48)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.png", b"this is not a picture\n", "not an image"),
    ],
)
def test_unreadable_files_name_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        open_rgb(path)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    photo_like(300, 200, 3).save(buffer, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg: cannot decode"):
        open_rgb(path)


def test_missing_file_and_decompression_bomb(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        open_rgb(tmp_path / "gone.jpg")
    path = _save(Image.new("L", (3000, 3000)), tmp_path / "huge.png")
    with pytest.raises(ImageError, match="over the limit"):
        open_rgb(path, max_pixels=1_000_000)


def test_misnamed_file_is_read_by_content(tmp_path):
    path = _save(photo_like(40, 30, 4), tmp_path / "really_a_png.jpg", format="PNG")
    assert open_rgb(path).size == (40, 30)


def test_resize_helpers_shapes():
    img = photo_like(300, 200, 5)
    assert resize_squash(img, 224).shape == (224, 224, 3)
    assert resize_center_crop(img, 256, 224).shape == (224, 224, 3)


@pytest.mark.parametrize("file_format", ["JPEG", "MPO"])
def test_jpeg_draft_also_applies_to_jpegs_with_extra_pictures(file_format):
    """Phones store gain maps as extra pictures, and Pillow then calls the file MPO: it is
    still a JPEG and must decode at the reduced scale too (it used to decode at full size)."""
    from dreamsearch.images import decode

    buffer = io.BytesIO()
    photo = photo_like(2000, 1500, 1)
    photo.save(
        buffer,
        file_format,
        **({"save_all": True, "append_images": [photo_like(500, 375, 2)]} if file_format == "MPO" else {}),
    )
    picture = decode("phone.jpg", data=buffer.getvalue(), draft_size=448)
    assert picture.format == file_format
    assert (picture.width, picture.height) == (2000, 1500)  # as the file says
    assert picture.image.size == (1000, 750)  # decoded at 1/2 scale, the smallest keeping 448 px


def webp_bytes(picture: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", quality=90, **options)
    return buffer.getvalue()


def at_model_input(picture: Image.Image) -> np.ndarray:
    return resize_squash(picture, 224).astype(np.float64)


@pytest.mark.slow
def test_a_large_webp_decodes_reduced_close_to_its_full_decode():
    """Pillow decodes a WebP whole (a 414 KB 16383x12000 upload took 3 GB, issue 21). With
    a draft size it decodes at 1/2, 1/4 or 1/8 scale, like a JPEG, and what reaches the
    model differs from the full decode about as much as a JPEG draft does."""
    from dreamsearch.images import decode

    photo = photo_like(4000, 3000, 3)
    data = webp_bytes(photo)
    full = decode("big.webp", data=data).image
    picture = decode("big.webp", data=data, draft_size=448)
    assert (picture.width, picture.height, picture.format) == (4000, 3000, "WEBP")
    assert picture.image.size == (1000, 750)  # 1/4: the smallest scale keeping 448 px on each side
    difference = np.abs(at_model_input(full) - at_model_input(picture.image))
    assert difference.mean() <= 1.0 and difference.max() <= 8, (difference.mean(), difference.max())
    small = decode("small.webp", data=webp_bytes(photo_like(800, 600, 4)), draft_size=448).image
    assert small.size == (800, 600)  # too small to reduce: decoded whole


@pytest.mark.parametrize("file_format", ["PNG", "TIFF"])
def test_a_large_picture_of_a_format_without_draft_is_reduced_before_the_resize(file_format):
    """A 12 MP PNG is decoded whole, then averaged down 2, 4 or 8 times (keeping three
    times the model's input) before the bicubic resize: what reaches the model differs from
    the full resize as little as a JPEG draft's."""
    from dreamsearch.images import decode

    buffer = io.BytesIO()
    photo_like(4000, 3000, 6).save(buffer, file_format)
    data = buffer.getvalue()
    full = decode("big", data=data).image
    picture = decode("big", data=data, draft_size=448)
    assert (picture.width, picture.height, picture.format) == (4000, 3000, file_format)
    assert picture.image.size == (1000, 750)  # 1/4: 750 px keeps 3 x 224 on the short side
    difference = np.abs(at_model_input(full) - at_model_input(picture.image))
    assert difference.max() <= 2 and difference.mean() <= 0.3, (difference.mean(), difference.max())
    buffer = io.BytesIO()
    photo_like(1200, 900, 7).save(buffer, file_format)
    assert decode("small", data=buffer.getvalue(), draft_size=448).image.size == (1200, 900)  # under 2 x 672


def test_a_reduced_picture_is_turned_as_its_exif_says():
    from dreamsearch.images import decode

    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    buffer = io.BytesIO()
    photo_like(4000, 2000, 8).save(buffer, "PNG", exif=exif.tobytes())
    picture = decode("turned.png", data=buffer.getvalue(), draft_size=448)
    assert (picture.width, picture.height) == (2000, 4000)
    assert picture.image.size == (1000, 2000)  # turned, then reduced 1/2


def test_a_reduced_webp_is_turned_as_its_exif_says_and_its_transparency_is_white():
    from dreamsearch.images import decode

    photo = photo_like(2000, 1000, 5).convert("RGBA")
    photo.putalpha(Image.new("L", photo.size, 0))  # wholly transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    picture = decode("turned.webp", data=webp_bytes(photo, exif=exif.tobytes(), lossless=True), draft_size=448)
    assert (picture.width, picture.height) == (1000, 2000)
    assert picture.image.size == (500, 1000)  # reduced 1/2, then turned
    assert np.asarray(picture.image).min() == 255  # transparent pixels on white


def test_an_animated_webp_gives_its_first_frame_through_pillow_and_a_broken_one_fails_with_a_reason():
    from dreamsearch.images import decode

    frames = [photo_like(1800, 1800, seed) for seed in (6, 7)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
    first = decode("moving.webp", data=buffer.getvalue(), draft_size=448).image
    assert first.size == (900, 900)  # the first frame, through Pillow (not libvips), then averaged 1/2
    data = webp_bytes(photo_like(2000, 2000, 8))
    with pytest.raises(ImageError, match="broken.webp: cannot decode"):
        decode("broken.webp", data=data[: len(data) // 2], draft_size=448)
