from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from blipq.contract.errors import InputTooLarge, InvalidImage
from blipq.contract.images import ImagePolicy, sniff_format
from blipq.inference.decode import decode_image, to_rgb
from tests.helpers import drawing, encode, grey16, noise, png_declaring


@pytest.mark.parametrize(
    ("fmt", "save_args"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("GIF", {}), ("BMP", {}), ("TIFF", {})],
)
def test_each_allowed_format_decodes_to_rgb(fmt: str, save_args: dict[str, object]) -> None:
    source = drawing(120, 80, "white", "red")
    data = encode(source, fmt, **save_args)
    assert sniff_format(data) == fmt
    image = decode_image(data)
    assert image.mode == "RGB"
    assert image.size == (120, 80)
    assert image.getpixel((60, 40))[0] > 200  # the red ellipse survived the round trip


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (40, 20), "red")
    source.paste(Image.new("RGB", (20, 20), "blue"), (20, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    image = decode_image(encode(source, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200
    assert top[2] < 60
    assert bottom[2] > 200
    assert bottom[0] < 60


def test_cmyk_jpeg_becomes_the_right_colour() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # no cyan, full magenta+yellow = red
    red, green, blue = decode_image(encode(cmyk, "JPEG", quality=95)).getpixel((16, 16))
    assert red > 200
    assert green < 60
    assert blue < 60


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = decode_image(encode(grey16(64, 64, seed=1), "PNG"))
    pixels = np.asarray(image.convert("L"))
    assert 100 < pixels.mean() < 155  # uniform noise over the full range averages mid-grey
    assert pixels.min() < 20
    assert pixels.max() > 235


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_a_large_transparent_picture_composited_in_blocks_equals_one_whole_composite(mode: str) -> None:
    """Over several blocks of rows (1500 x 1600 pixels), every pixel is what one whole-image composite gives."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (1600, 1500, 4), dtype=np.uint8)
    picture = Image.fromarray(pixels, mode="RGBA").convert(mode)
    expected = Image.alpha_composite(Image.new("RGBA", picture.size, (255,) * 4), picture.convert("RGBA"))
    assert to_rgb(picture).tobytes() == expected.convert("RGB").tobytes()


def test_transparency_is_composited_on_white() -> None:
    transparent = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert decode_image(encode(transparent, "PNG")).getpixel((5, 5)) == (255, 255, 255)
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.info["transparency"] = 0
    assert decode_image(encode(palette, "PNG", transparency=0)).getpixel((5, 5)) == (255, 255, 255)
    grey_alpha = Image.new("LA", (10, 10), (0, 255))
    assert decode_image(encode(grey_alpha, "PNG")).getpixel((5, 5)) == (0, 0, 0)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    red, _, blue = decode_image(data).getpixel((8, 8))
    assert red > 200
    assert blue < 60


def test_one_pixel_image_is_fine() -> None:
    assert decode_image(encode(Image.new("RGB", (1, 1), "green"), "PNG")).size == (1, 1)


def test_decompression_bomb_is_a_clear_error_not_a_warning(recwarn: pytest.WarningsRecorder) -> None:
    with pytest.raises(InputTooLarge, match="too large"):
        decode_image(png_declaring(50_000, 50_000))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(
        InputTooLarge,
        match=r"9000x8000 = 72000000 pixels, over the max_image_pixels limit of 64000000",
    ):
        decode_image(png_declaring(9000, 8000))
    small_limit = ImagePolicy(max_pixels=100)
    with pytest.raises(InputTooLarge, match="over the max_image_pixels limit of 100"):
        decode_image(encode(noise(20, 20, seed=0), "PNG"), small_limit)


def test_truncated_jpeg_is_invalid() -> None:
    data = encode(noise(400, 300, seed=4), "JPEG", quality=90)
    with pytest.raises(InvalidImage, match=r"truncated or corrupt JPEG data \(\d+ bytes\)"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "image is empty"),
        (b"hello, this is not an image\n", "got text starting with 'hello, this is not an"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "got an SVG document"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10"/>', "got an SVG document"),
        (b"<!DOCTYPE html><html><body>nope</body></html>", "got an HTML page"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "got a PDF document"),
        (bytes(range(256)) * 4, "got binary data starting with 00 01 02"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt PNG data"),
    ],
)
def test_non_images_name_what_was_received(data: bytes, expected: str) -> None:
    with pytest.raises(InvalidImage, match=expected.replace("(", r"\(")):
        decode_image(data)


def test_formats_outside_the_policy_are_refused() -> None:
    with pytest.raises(InvalidImage, match="JPEG images are not accepted"):
        decode_image(encode(noise(10, 10, seed=0), "JPEG"), ImagePolicy(formats=("PNG",)))
