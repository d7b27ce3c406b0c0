"""The one error hierarchy: every failure a user can cause or see has a machine-readable code.

The HTTP status of each code is mapped in one place, `blipq.gateway.error_codes`.
"""


class BlipqError(Exception):
    """Root of all blipq errors. `code` is machine-readable, `message` is for people."""

    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}  # HTTP response headers that go with it (Retry-After, WWW-Authenticate)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidInput(BlipqError):
    """A request that cannot be read: not UTF-8 JSON, bad base64, not an http(s) URL, no images."""

    code = "invalid_input"


class InvalidRequest(BlipqError):
    """Readable JSON that does not fit the request schema (missing, unknown or mistyped fields)."""

    code = "invalid_request"


class UnsupportedMediaType(BlipqError):
    """A body in a format the route does not take."""

    code = "unsupported_media_type"


class InvalidImage(BlipqError):
    """The bytes are not an image we accept (wrong format, truncated, empty, ...)."""

    code = "invalid_image"


class InputTooLarge(BlipqError):
    """An input exceeds a configured limit (pixels, bytes, images per job)."""

    code = "input_too_large"


class InvalidOptions(BlipqError):
    """Generation options that cannot be honoured (min > max, prompt longer than max_length, ...)."""

    code = "invalid_options"


class UnreadableInput(BlipqError):
    """A local file could not be read (missing, a directory, no permission)."""

    code = "unreadable_input"


class FetchFailed(BlipqError):
    """A URL input could not be fetched."""

    code = "fetch_failed"


class ImageFailed(BlipqError):
    """An image of a synchronous single-image request failed; carries that image's own error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Timeout(BlipqError):
    """A blocking request waited longer than its limit; the job goes on and can be polled."""

    code = "timeout"


class Unauthorized(BlipqError):
    """API keys are on and the request carries none, or an unknown one."""

    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RetryLater(BlipqError):
    """429: the request was fine but arrived when it cannot be taken; Retry-After says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class QueueFull(RetryLater):
    """Backpressure: too many images are waiting."""

    code = "queue_full"


class RateLimited(RetryLater):
    """This API key (or client) sent more requests than the configured rate allows."""

    code = "rate_limited"


class IdempotencyConflict(BlipqError):
    """An Idempotency-Key was reused with a different request body."""

    code = "idempotency_conflict"


class JobNotFound(BlipqError):
    code = "job_not_found"


class QueueUnavailable(BlipqError):
    """The broker cannot be reached or did not take the job (disconnected, no queue bound, no confirm)."""

    code = "queue_unavailable"


class StoreUnavailable(BlipqError):
    """The result store cannot be opened, read or written (disk full, file locked or unwritable, a newer
    schema)."""

    code = "store_unavailable"


class ModelUnavailable(BlipqError):
    """The checkpoint or the device cannot be used; the message says what to do."""

    code = "model_unavailable"


class ModelFailed(BlipqError):
    """The model raised while captioning a batch; every image of that batch gets this error."""

    code = "model_error"
