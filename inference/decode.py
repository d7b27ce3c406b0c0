"""Bytes -> RGB image, refusing anything that is not a plain raster image of a sane size."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import cast

import numpy as np
from PIL import Image, ImageCms, ImageOps

from blipq.contract.errors import InputTooLarge, InvalidImage
from blipq.contract.images import ImagePolicy, open_image

#: Pixels converted at a time where a whole-image conversion would copy a large picture several times over
#: (wide greyscale scaled to 8 bits through float64, transparency composited on white): a block stays a few
#: megabytes whatever the image's size.
_PIXELS_PER_BLOCK = 1 << 20


def decode_image(
    data: bytes, policy: ImagePolicy | None = None, *, reduce_to: tuple[int, int] | None = None
) -> Image.Image:
    """Decode one image to RGB (no transparency left) with EXIF orientation applied.

    `reduce_to` (width, height): a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 of its
    size in the DCT domain, never below `reduce_to` (much cheaper; not the exact pixels of a full decode).

    Raises `InvalidImage` for empty, non-image, disallowed, truncated or corrupt data and
    `InputTooLarge` when the data or the declared size exceeds the policy (checked from the
    header, before any pixel is decoded).
    """
    image, fmt = open_image(data, policy or ImagePolicy())
    try:
        image.seek(0)  # first frame of animations and multi-page TIFFs
        if reduce_to is not None and fmt == "JPEG":
            image.draft(image.mode, reduce_to)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise InputTooLarge(f"{fmt} image is too large to decode: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"truncated or corrupt {fmt} data ({len(data)} bytes): {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a person would see the picture.

    Transparency is composited on white (a plain `convert("RGB")` keeps whatever colour the
    transparent pixels happen to hold, often black); 16/32-bit grey is scaled, not clipped;
    CMYK uses the embedded ICC profile when there is one.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_wide_grey(image)
    if "transparency" in image.info:
        # A palette entry, or (a PNG's tRNS chunk) one colour or grey level, that stands for transparent.
        image = image.convert("RGBA")
        mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGB")
        mode = image.mode
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(image)
    return image.convert("RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """Transparency composited on white, a block of rows at a time: a large picture costs its RGB copy beside
    the decoded one, not three more full-size RGBA copies (measured on a 6000 x 6000 RGBA PNG: a peak of 6.6x
    its RGB size with one whole-image composite, 2.8x now). Each pixel is computed as a whole-image composite
    would."""
    rgb = Image.new("RGB", image.size)
    for box in _blocks_of_rows(image):
        strip = image.crop(box).convert("RGBA")
        background = Image.new("RGBA", strip.size, (255, 255, 255, 255))
        rgb.paste(Image.alpha_composite(background, strip).convert("RGB"), box[:2])
    return rgb


def _scale_wide_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float greyscale -> 8-bit by the full range of its type.

    A block of rows at a time, so a 64-megapixel image costs its 8-bit copy, not gigabytes of float64."""
    low, high = cast(tuple[float, float], image.getextrema())  # (min, max): the image has one band
    if image.mode == "F":
        scale = 255.0 / (high - low) if high > low else 0.0
    else:
        top = 65535.0 if image.mode.startswith("I;16") or high <= 65535 else high
        low, scale = 0.0, 255.0 / top
    width, height = image.size
    grey = np.empty((height, width), dtype=np.uint8)
    for box in _blocks_of_rows(image):
        block = np.asarray(image.crop(box), dtype=np.float64)
        grey[box[1] : box[3]] = np.clip((block - low) * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _blocks_of_rows(image: Image.Image) -> Iterator[tuple[int, int, int, int]]:
    """The crop boxes of whole rows, top to bottom, about _PIXELS_PER_BLOCK pixels each (at least one row)."""
    width, height = image.size
    rows = max(1, _PIXELS_PER_BLOCK // width)
    for top_row in range(0, height, rows):
        yield (0, top_row, width, min(height, top_row + rows))


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile is common; fall back to the naive conversion below
    return image.convert("RGB")
