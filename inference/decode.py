"""Bytes -> RGB image, refusing anything that is not a plain raster image of a sane size."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms, ImageOps

from blipq.contract.errors import InputTooLarge, InvalidImage
from blipq.contract.images import ImagePolicy, open_image


def decode_image(data: bytes, policy: ImagePolicy | None = None) -> Image.Image:
    """Decode one image to RGB with EXIF orientation applied.

    Raises `InvalidImage` for empty, non-image, disallowed, truncated or corrupt data and
    `InputTooLarge` when the data or the declared size exceeds the policy (checked from the
    header, before any pixel is decoded).
    """
    image, fmt = open_image(data, policy or ImagePolicy())
    try:
        image.seek(0)  # first frame of animations and multi-page TIFFs
        image.load()
        oriented = ImageOps.exif_transpose(image)
        return to_rgb(oriented)
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
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_wide_grey(image)
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_wide_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float greyscale -> 8-bit by the full range of its type."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        grey = (pixels - low) * scale
    else:
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() <= 65535 else float(pixels.max())
        grey = pixels * (255.0 / top)
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L").convert("RGB")


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
