"""Request and response bodies (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from blipq.contract.options import CaptionOptions
from blipq.gateway.error_codes import describe_status
from blipq.gateway.jobs import ImageOutcome, Job, JobStatus


class SeedRequest(BaseModel):
    """The original project's body: base64 images, or image URLs (a list or one comma-separated string)."""

    imgb64s: list[str] | None = Field(None, description="Base64 images; a data: URL prefix and whitespace are fine.")
    imgurls: list[str] | str | None = Field(None, description="http(s) URLs, as a list or comma-separated.")

    @model_validator(mode="after")
    def _one_kind(self) -> SeedRequest:
        if self.imgb64s is None and self.imgurls is None:
            raise ValueError("give imgb64s (base64 images) or imgurls (image URLs)")
        if self.imgb64s is not None and self.imgurls is not None:
            raise ValueError("give imgb64s or imgurls, not both")
        return self

    def urls(self) -> list[str]:
        if isinstance(self.imgurls, str):
            return [url.strip() for url in self.imgurls.split(",") if url.strip()]
        return self.imgurls or []


class SeedStarted(BaseModel):
    id: str
    msg: str = "Job Started!"


class SeedResult(BaseModel):
    id: str
    result: list[str] = Field(description="One caption per image; an image that failed has an empty caption.")


class SeedFinished(SeedResult):
    msg: str = "Job finished!"


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable; the codes of each HTTP status are listed with that status.")
    message: str = Field(description="For people: what was wrong, naming the image by its index and the limit.")


class ErrorResponse(BaseModel):
    error: ErrorBody
    id: str | None = Field(None, description="The job id, when the error concerns an accepted job (504).")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses, each described by its codes from the one mapping."""
    return {status: {"model": ErrorResponse, "description": describe_status(status)} for status in statuses}


#: What any job route may answer besides success (the schema tests hold the routes to it).
JOB_ROUTE_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 429, 503)


class ImageView(BaseModel):
    status: str = Field(description="queued, running, done, failed or cancelled")
    caption: str | None = None
    error: ErrorBody | None = None

    @classmethod
    def of(cls, image: ImageOutcome) -> ImageView:
        error = ErrorBody(code=image.error.code, message=image.error.message) if image.error else None
        return cls(status=image.state, caption=image.caption, error=error)


class JobView(BaseModel):
    id: str
    status: JobStatus
    options: CaptionOptions
    images: list[ImageView]
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            status=job.status,
            options=job.options,
            images=[ImageView.of(image) for image in job.images],
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class HuggingFaceRequest(BaseModel):
    """Hugging Face Inference's JSON form of an image-to-text request."""

    inputs: str = Field(description="The image as base64.")
    parameters: dict[str, Any] | None = Field(None, description="Not supported: use POST /v1/captions for options.")


class GeneratedText(BaseModel):
    generated_text: str


def seed_captions(job: Job) -> list[str]:
    return [caption or "" for caption in job.captions]
