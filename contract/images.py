"""Image header checks: the format by its magic bytes, byte and pixel limits, without decoding pixels.

The gateway runs them on every upload so that a bad image is refused before it is queued; the
inference side runs them again before decoding. What was received is sniffed from the leading
bytes so that errors can say what it was ("got an SVG document") instead of a bare "cannot
identify image file".
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from blipq.contract.errors import InputTooLarge, InvalidImage

#: Pillow format names we decode. Everything else is refused before Pillow parses it.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"8BPS", "a Photoshop document"),
)


class ImageLimits(Protocol):
    """The settings an ImagePolicy is made from (both sides' settings have them)."""

    @property
    def max_image_pixels(self) -> int: ...
    @property
    def max_image_bytes(self) -> int: ...
    @property
    def image_formats(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ImagePolicy:
    """Which images are accepted: formats, pixels and (where not capped already) bytes."""

    max_pixels: int = 64_000_000
    formats: tuple[str, ...] = ALLOWED_FORMATS
    max_bytes: int | None = None

    @classmethod
    def of(cls, settings: ImageLimits, *, limit_bytes: bool = True) -> ImagePolicy:
        """`limit_bytes=False` where the bytes were already capped (URL downloads) or are trusted (local files)."""
        return cls(
            max_pixels=settings.max_image_pixels,
            formats=settings.image_formats,
            max_bytes=settings.max_image_bytes if limit_bytes else None,
        )


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name of an allowed raster format, judged by magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def describe_bytes(data: bytes) -> str:
    """A short human description of what some non-image bytes look like."""
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return name
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "an SVG document (vector images are not supported)"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith(b"<?xml"):
        return "an XML document"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "an AVIF/HEIF image (not supported)"
    try:
        text = data[:64].decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {data[:8].hex(' ')}"
    if all(ch.isprintable() or ch.isspace() for ch in text):
        preview = text[:24].replace("\n", " ")
        return f"text starting with {preview!r}"
    return f"binary data starting with {data[:8].hex(' ')}"


def check_image(data: bytes, policy: ImagePolicy) -> None:
    """Everything decoding checks without decoding pixels: cheap enough for the API to run on every
    upload, so a request with a bad image is refused before it is queued."""
    image, _ = open_image(data, policy)
    image.close()


def open_image(data: bytes, policy: ImagePolicy) -> tuple[Image.Image, str]:
    """Parse the header only (Pillow is lazy): format allowlist, byte and pixel limits."""
    if not data:
        raise InvalidImage("image is empty (0 bytes)")
    if policy.max_bytes is not None and len(data) > policy.max_bytes:
        raise InputTooLarge(f"image is {len(data)} bytes, over the max_image_bytes limit of {policy.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImage(f"not a supported image (got {describe_bytes(data)}, {len(data)} bytes)")
    if fmt not in policy.formats:
        raise InvalidImage(f"{fmt} images are not accepted (image_formats: {', '.join(policy.formats)})")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise InputTooLarge(f"{fmt} image is too large to decode: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"corrupt {fmt} data ({len(data)} bytes): the header cannot be parsed") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"corrupt {fmt} data ({len(data)} bytes): {exc}") from None
    width, height = image.size
    if width * height > policy.max_pixels:
        image.close()
        raise InputTooLarge(
            f"{fmt} image is {width}x{height} = {width * height} pixels, "
            f"over the max_image_pixels limit of {policy.max_pixels}"
        )
    if width == 0 or height == 0:
        image.close()
        raise InvalidImage(f"{fmt} image has no pixels ({width}x{height})")
    return image, fmt
