"""The reply codec of AMQP contract v1, both ways: a worker's results -> a reply body, and a reply body -> the
results a gateway records. One place, so the two sides cannot read a reply differently."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from blipq.contract.amqp import CaptionReply, ReplyError, ReplyImage
from blipq.contract.messages import ErrorInfo, ImageResult
from blipq.contract.parts import read_part_header


@dataclass(frozen=True)
class Reply:
    """A decoded reply: per-image results in request order, or one error for the whole request. `indices`: the
    job's images it answers, for the reply to one part of a split job (None: all of them)."""

    correlation_id: str
    results: list[ImageResult]
    error: ErrorInfo | None = None
    indices: tuple[int, ...] | None = None


def encode_results(correlation_id: str, results: list[ImageResult], model: str) -> bytes:
    """`succeeded` when at least one image got a caption; each image's error stays with the image."""
    images = [_reply_image(result) for result in results]
    status = "succeeded" if any(image.status == "done" for image in images) else "failed"
    return CaptionReply(id=correlation_id, status=status, images=images, model=model).model_dump_json().encode()


def encode_error(correlation_id: str, error: ErrorInfo) -> bytes:
    """A request that could not be run at all: no images, one top-level error."""
    reply = CaptionReply(id=correlation_id, status="failed", error=ReplyError(code=error.code, message=error.message))
    return reply.model_dump_json().encode()


def decode(body: bytes, headers: Mapping[str, object] | None = None) -> Reply:
    """A reply's body and its headers (the part it answers). Raises pydantic's ValidationError for a body that
    is not a reply, or a part header that is not one."""
    reply = CaptionReply.model_validate_json(body)
    part = read_part_header(headers)
    indices = None if part is None else tuple(part.images)
    if reply.error is not None:
        return Reply(reply.id, [], ErrorInfo(reply.error.code, reply.error.message), indices)
    return Reply(reply.id, [_image_result(image) for image in reply.images], indices=indices)


def _reply_image(result: ImageResult) -> ReplyImage:
    if result.error is not None:
        return ReplyImage(status="failed", error=ReplyError(code=result.error.code, message=result.error.message))
    return ReplyImage(status="done", caption=result.caption)


def _image_result(image: ReplyImage) -> ImageResult:
    if image.error is not None:
        return ImageResult(error=ErrorInfo(image.error.code, image.error.message))
    if image.caption is None:  # another publisher's worker could send this
        return ImageResult(error=ErrorInfo("model_error", "the worker's reply had no caption and no error"))
    return ImageResult(caption=image.caption)
