"""Request images -> queue inputs, refusing everything that can be refused before queuing.

Each error names the image by its index in the request and the limit it broke.
"""

from __future__ import annotations

import binascii
import re

import pybase64

from blipq.contract.errors import BlipqError, InputTooLarge, InvalidInput
from blipq.contract.images import ImagePolicy, check_image
from blipq.contract.messages import ImageInput
from blipq.contract.requests import ImageSpec
from blipq.contract.urls import ALLOWED_SCHEMES, is_url

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
MAX_URL_LENGTH = 2048


def from_base64(text: str, index: int, policy: ImagePolicy) -> ImageInput:
    """Decode one base64 image (a `data:image/...;base64,` prefix, whitespace and missing padding are tolerated)."""
    cleaned = _DATA_URL.sub("", text.strip(), count=1)
    if policy.max_bytes is not None and len(cleaned) > 4 * -(-policy.max_bytes // 3) + len(cleaned) // 50:
        # (a fiftieth for line breaks: MIME wraps base64 at 76 characters)
        raise InputTooLarge(
            f"image {index}: {len(cleaned)} base64 characters encode more than the max_image_bytes limit "
            f"of {policy.max_bytes} bytes"
        )
    try:
        data = _strict_b64decode(cleaned)
    except (binascii.Error, ValueError):
        # Line-wrapped base64: the rare case pays for the whitespace scan (a regex over a megabyte takes
        # milliseconds; the strict decode above, a fraction of that).
        try:
            data = _strict_b64decode("".join(cleaned.split()))
        except (binascii.Error, ValueError):
            raise InvalidInput(f"image {index}: not valid base64 ({len(text)} characters)") from None
    return from_bytes(data, index, policy)


def _strict_b64decode(text: str) -> bytes:
    # pybase64: the standard alphabet and its errors, with SIMD (tens of times faster than the standard library's).
    return pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def from_bytes(data: bytes, index: int, policy: ImagePolicy) -> ImageInput:
    """Format, byte and pixel limits are checked from the header now; full decoding happens in the worker."""
    try:
        check_image(data, policy)
    except BlipqError as exc:
        exc.message = f"image {index}: {exc.message}"
        raise
    return ImageInput(data=data)


def from_spec(spec: ImageSpec, index: int, policy: ImagePolicy) -> ImageInput:
    """One image of a JSON request body (`POST /v1/jobs`, or a request message): base64 or a URL."""
    return from_base64(spec.b64, index, policy) if spec.b64 is not None else from_url(spec.url or "", index)


def from_url(url: str, index: int) -> ImageInput:
    cleaned = url.strip()
    if len(cleaned) > MAX_URL_LENGTH:
        raise InvalidInput(f"image {index}: the URL is {len(cleaned)} characters; the limit is {MAX_URL_LENGTH}")
    if not is_url(cleaned):
        raise InvalidInput(f"image {index}: {url[:200]!r} is not an {' or '.join(ALLOWED_SCHEMES)} URL with a host")
    return ImageInput(url=cleaned)


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidInput("no images given")
    if count > limit:
        raise InputTooLarge(f"{count} images in one request; the max_images_per_job limit is {limit}")
