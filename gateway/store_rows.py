"""Jobs and requests from the rows both backends read: the same columns, in the same order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from blipq.contract.messages import ErrorInfo, ImageInput
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import ImageOutcome, Job, JobStatus
from blipq.gateway.store import StoredRequest

#: A job's row, and its images' rows (ordered by job_id, idx), as `jobs_from_rows` reads them.
JOB_COLUMNS = "id, status, options, created_at, started_at, finished_at, owner"
IMAGE_COLUMNS = "job_id, state, caption, error_code, error_message"

Row = Sequence[Any]  # what the database driver returned


def jobs_from_rows(jobs: Sequence[Row], images: Iterable[Row]) -> list[Job]:
    outcomes: dict[str, list[ImageOutcome]] = {row[0]: [] for row in jobs}
    for job_id, state, caption, code, message in images:
        error = ErrorInfo(code, message) if code is not None else None
        outcomes[job_id].append(ImageOutcome(state=state, caption=caption, error=error))
    return [
        Job(
            id=job_id,
            status=JobStatus(status),
            options=CaptionOptions.model_validate_json(options),
            images=tuple(outcomes[job_id]),
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            owner=owner,
        )
        for job_id, status, options, created_at, started_at, finished_at, owner in jobs
    ]


def request_from_rows(job_id: str, job: Row, images: Sequence[Row]) -> StoredRequest:
    """`job`: (options, attempts, published); `images`: (idx, data, url) of its pending images, in order."""
    options, attempts, published = job
    kept = None
    if all(data is not None or url is not None for _, data, url in images):
        kept = tuple(ImageInput(data=bytes(data)) if url is None else ImageInput(url=url) for _, data, url in images)
    return StoredRequest(
        job_id,
        kept,
        CaptionOptions.model_validate_json(options),
        attempts,
        tuple(index for index, _, _ in images),
        bool(published),
    )
