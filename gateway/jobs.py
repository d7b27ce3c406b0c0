"""Jobs as the gateway stores and shows them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from blipq.contract.messages import ErrorInfo
from blipq.contract.options import CaptionOptions


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


ImageState = Literal["queued", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class ImageOutcome:
    state: ImageState
    caption: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    options: CaptionOptions
    images: tuple[ImageOutcome, ...]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    owner: str | None = None  # who created it, when API keys are on (a key's id, never the key)

    @property
    def captions(self) -> list[str | None]:
        """One entry per image, None where the image has no caption (failed, pending, cancelled)."""
        return [image.caption for image in self.images]


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key (scoped to the job's owner) and a fingerprint of the request it came with."""

    key: str
    fingerprint: str
