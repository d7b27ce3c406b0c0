"""The one mapping from error codes to HTTP statuses, with what each code means.

The error handlers answer with it, the OpenAPI schema documents it, and a test holds README's
error table to it.
"""

from __future__ import annotations

from typing import NamedTuple


class ErrorCode(NamedTuple):
    status: int
    meaning: str


ERROR_CODES: dict[str, ErrorCode] = {
    "invalid_input": ErrorCode(
        400,
        "the request cannot be read: a body that is not UTF-8 JSON or is nested too deeply, a multipart body "
        "that cannot be parsed, base64 that does not decode, a URL that is not http(s) with a host, no images",
    ),
    "unauthorized": ErrorCode(401, "API keys are on and the request has no known key"),
    "not_found": ErrorCode(404, "no such route"),
    "job_not_found": ErrorCode(404, "no such job (or cursor) for this caller"),
    "method_not_allowed": ErrorCode(405, "the route does not take this method"),
    "input_too_large": ErrorCode(413, "the body, an image or the number of images is over a limit"),
    "unsupported_media_type": ErrorCode(415, "a Content-Type the route does not take (JSON routes take JSON)"),
    "invalid_request": ErrorCode(
        422, "readable JSON, a query or a header that does not fit the schema (missing, unknown or mistyped fields)"
    ),
    "invalid_image": ErrorCode(422, "the bytes are not an image in an accepted format"),
    "invalid_options": ErrorCode(422, "generation options this model cannot honour"),
    "idempotency_conflict": ErrorCode(422, "an Idempotency-Key reused with a different body"),
    "queue_full": ErrorCode(429, "too many images are waiting; retry after Retry-After seconds"),
    "rate_limited": ErrorCode(429, "this key sent more requests than BLIPQ_RATE_LIMIT allows; see Retry-After"),
    "internal_error": ErrorCode(500, "a bug; the server logged the details"),
    "queue_unavailable": ErrorCode(503, "the broker cannot be reached or did not take the job"),
    "store_unavailable": ErrorCode(503, "the result store cannot be read or written (disk full, locked, unwritable)"),
    "model_unavailable": ErrorCode(503, "the model is not running: still loading, stopping, or its thread died"),
    "timeout": ErrorCode(504, "a blocking request waited longer than its limit; the body has the job id to poll"),
}

#: A synchronous one-image route (/v1/hf) whose image could not be captioned answers this status with the
#: image's own error code (invalid_image, fetch_failed, worker_lost, ...).
IMAGE_FAILED_STATUS = 422

#: Starlette's and FastAPI's own HTTP errors (routing, body reading) by status.
HTTP_EXCEPTION_CODES = {
    400: "invalid_input",
    404: "not_found",
    405: "method_not_allowed",
    413: "input_too_large",
    415: "unsupported_media_type",
}


def codes_with_status(status: int) -> list[str]:
    return [code for code, error in ERROR_CODES.items() if error.status == status]


def describe_status(status: int) -> str:
    """The OpenAPI description of one error status: its codes and what each means."""
    return "; ".join(f"`{code}`: {ERROR_CODES[code].meaning}" for code in codes_with_status(status))
