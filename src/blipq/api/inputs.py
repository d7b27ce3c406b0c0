"""Request images -> queue inputs, refusing what can be refused before queuing."""

from __future__ import annotations

import base64
import binascii
import re

from blipq.errors import InputTooLarge, InvalidImage, InvalidInput
from blipq.fetch import ALLOWED_SCHEMES, is_url
from blipq.images import describe_bytes, sniff_format
from blipq.jobs import ImageInput

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def from_base64(text: str, index: int) -> ImageInput:
    """Decode one base64 image (a `data:image/...;base64,` prefix and whitespace are tolerated)."""
    cleaned = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    try:
        data = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"image {index}: not valid base64 ({len(text)} characters)") from None
    return from_bytes(data, index)


def from_bytes(data: bytes, index: int) -> ImageInput:
    """Refuse bytes that are obviously not an image now; full decoding happens in the worker."""
    if not data:
        raise InvalidImage(f"image {index}: image is empty (0 bytes)")
    if sniff_format(data) is None:
        raise InvalidImage(f"image {index}: not a supported image (got {describe_bytes(data)}, {len(data)} bytes)")
    return ImageInput(data=data)


def from_url(url: str, index: int) -> ImageInput:
    if not is_url(url.strip()):
        raise InvalidInput(f"image {index}: {url[:200]!r} is not an {' or '.join(ALLOWED_SCHEMES)} URL")
    return ImageInput(url=url.strip())


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidInput("no images given")
    if count > limit:
        raise InputTooLarge(f"{count} images in one request; the limit is {limit}")
