"""A request message with its image bytes carried raw, instead of as base64 inside JSON (AMQP contract v1).

Content type `application/vnd.blipq.framed-request`. The body is one line of JSON, the header, then a
newline (0x0A), then the bytes of each image given by length, one after another, in order:

    {"images": [{"bytes": 48213}, {"url": "https://..."}, {"bytes": 9120}], "options": {"num_beams": 3}}\\n
    <48213 bytes of the first image><9120 bytes of the third>

The header is the JSON request body with `{"bytes": <length>}` in place of `{"b64": "..."}`. Nothing is
base64-encoded or -decoded on either side (a third fewer bytes on the wire), and a large image is not a
large JSON string. The gateway publishes this way; the JSON body stays accepted from any publisher.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from blipq.contract.errors import InvalidRequest
from blipq.contract.messages import ImageInput
from blipq.contract.options import CaptionOptions

FRAMED_CONTENT_TYPE = "application/vnd.blipq.framed-request"


class FramedImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bytes: int | None = Field(None, ge=0, description="Length of this image's bytes after the header line.")
    url: str | None = Field(None, description="http(s) URL, fetched when the job runs.")

    @model_validator(mode="after")
    def _exactly_one(self) -> FramedImage:
        if (self.bytes is None) == (self.url is None):
            raise ValueError("each image needs exactly one of bytes or url")
        return self


class FramedHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[FramedImage] = Field(description="The images to caption, in order.")
    options: CaptionOptions = Field(default_factory=CaptionOptions)


def frame_request(images: Sequence[ImageInput], options: CaptionOptions) -> bytes:
    header = _header(images, options)
    return b"".join([header, b"\n", *(image.data for image in images if image.data is not None)])


def framed_header_size(images: Sequence[ImageInput], options: CaptionOptions) -> int:
    """The length of the header line `frame_request` writes (without its newline)."""
    return len(_header(images, options))


def _header(images: Sequence[ImageInput], options: CaptionOptions) -> bytes:
    described = [
        FramedImage(url=image.url) if image.data is None else FramedImage(bytes=len(image.data)) for image in images
    ]
    return FramedHeader(images=described, options=options).model_dump_json(exclude_none=True).encode()


def read_framed_request(body: bytes) -> tuple[list[bytes | str], CaptionOptions]:
    """The images (bytes, or a URL to fetch) in order, and the options; InvalidRequest for a malformed body."""
    header_line, newline, payload = body.partition(b"\n")
    if not newline:
        raise InvalidRequest("not a framed request: no newline after the JSON header")
    try:
        header = FramedHeader.model_validate_json(header_line)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'header'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidRequest(f"not a framed request header: {problems}") from None
    declared = sum(image.bytes or 0 for image in header.images)
    if declared != len(payload):
        raise InvalidRequest(f"the header declares {declared} bytes of images, the body carries {len(payload)}")
    images: list[bytes | str] = []
    view, offset = memoryview(payload), 0
    for image in header.images:
        if image.bytes is None:
            assert image.url is not None
            images.append(image.url)
        else:
            images.append(bytes(view[offset : offset + image.bytes]))
            offset += image.bytes
    return images, header.options
