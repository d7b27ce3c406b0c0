"""What travels between the gateway and the inference side: image inputs in, per-image results out."""

from __future__ import annotations

from dataclasses import dataclass

from blipq.contract.errors import BlipqError


@dataclass(frozen=True)
class ImageInput:
    """One image of a job: its bytes (already base64-decoded) or a URL the worker fetches."""

    data: bytes | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("an image input is either bytes or a URL")


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str

    @classmethod
    def of(cls, error: BlipqError) -> ErrorInfo:
        return cls(error.code, error.message)


@dataclass(frozen=True)
class ImageResult:
    """The outcome of one image: a caption, or the error that stopped it."""

    caption: str | None = None
    error: ErrorInfo | None = None

    def __post_init__(self) -> None:
        if (self.caption is None) == (self.error is None):
            raise ValueError("an image result is either a caption or an error")
