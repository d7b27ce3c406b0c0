"""A request message's body -> the images the batcher runs, and why a dead letter died -> its reply's error
(AMQP contract v1; the reply codec is `blipq.contract.replies`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from blipq.contract.amqp import MAX_CUT_OFF_RUNS
from blipq.contract.errors import BlipqError, InvalidRequest
from blipq.contract.framing import FRAMED_CONTENT_TYPE, read_framed_request
from blipq.contract.images import ImagePolicy
from blipq.contract.inputs import from_bytes, from_spec, from_url
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.contract.requests import ImageSpec, JobRequest

log = logging.getLogger(__name__)

#: Why RabbitMQ dead-lettered a request (`x-death` reason) -> the error code of its reply.
DEAD_LETTER_CODES = {
    "rejected": (
        "invalid_request",
        "the request could not be read (not JSON, wrong schema, over the size limits, or no reply_to)",
    ),
    "expired": ("expired", "the request expired (its message TTL) before a worker took it"),
    "delivery_limit": (
        "worker_lost",
        f"the worker taking this request stopped each time it was delivered ({MAX_CUT_OFF_RUNS} times); giving up",
    ),
}


@dataclass
class ParsedRequest:
    """The images to run (with their positions in the request) and the ones refused already."""

    options: CaptionOptions
    size: int
    to_run: list[tuple[int, ImageInput]]
    refused: dict[int, ImageResult]

    def merge(self, results: list[ImageResult]) -> list[ImageResult]:
        """All results in request order: the refused ones and, in order, those of the images run."""
        ran = dict(zip((index for index, _ in self.to_run), results, strict=True))
        return [self.refused.get(index) or ran[index] for index in range(self.size)]


def parse_request(body: bytes, content_type: str | None, policy: ImagePolicy, max_images: int) -> ParsedRequest:
    """A JSON request body, or a framed one (`blipq.contract.framing`) by its content type. InvalidRequest for a
    body that is not a request; a bad image is refused alone (a per-image error)."""
    images: Sequence[str | bytes | ImageSpec]
    if content_type == FRAMED_CONTENT_TYPE:
        images, options = read_framed_request(body)
    else:
        try:
            request = JobRequest.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
            raise InvalidRequest(f"not a caption request: {problems}") from None
        images, options = request.images, request.options
    if not images or len(images) > max_images:
        raise InvalidRequest(f"a request carries 1 to {max_images} images, not {len(images)}")
    parsed = ParsedRequest(options, len(images), [], {})
    for index, image in enumerate(images):
        try:
            parsed.to_run.append((index, _image_input(image, index, policy)))
        except BlipqError as exc:
            parsed.refused[index] = ImageResult(error=ErrorInfo(exc.code, exc.message))
    return parsed


def _image_input(image: str | bytes | ImageSpec, index: int, policy: ImagePolicy) -> ImageInput:
    """Checked now, on arrival: a message may come from any publisher."""
    if isinstance(image, bytes):
        return from_bytes(image, index, policy)
    if isinstance(image, str):
        return from_url(image, index)
    return from_spec(image, index, policy)


def dead_letter_error(headers: dict[str, object] | None) -> ErrorInfo:
    """The reply error for a dead-lettered request, from its first `x-death` entry."""
    deaths = (headers or {}).get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    reason = str(first.get("reason", "rejected"))
    return ErrorInfo(*DEAD_LETTER_CODES.get(reason, DEAD_LETTER_CODES["rejected"]))
