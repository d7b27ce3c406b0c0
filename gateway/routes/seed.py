"""The original project's routes, with its exact request and response shapes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from blipq.contract.inputs import check_count, from_base64, from_url
from blipq.contract.messages import ImageInput
from blipq.contract.options import CaptionOptions
from blipq.gateway.auth import CallerDep
from blipq.gateway.deps import ServiceDep
from blipq.gateway.jobs import JobStatus
from blipq.gateway.schemas import (
    JOB_ROUTE_ERRORS,
    SeedFinished,
    SeedRequest,
    SeedResult,
    SeedStarted,
    error_responses,
    seed_captions,
)
from blipq.gateway.service import Service

router = APIRouter(
    tags=["original API"],
    responses=JOB_ROUTE_ERRORS,
)

FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def _inputs(body: SeedRequest, service: Service) -> list[ImageInput]:
    limit = service.settings.max_images_per_job
    if body.imgb64s is not None:
        check_count(len(body.imgb64s), limit)
        return [from_base64(text, index, service.image_policy) for index, text in enumerate(body.imgb64s)]
    urls = body.urls()
    check_count(len(urls), limit)
    return [from_url(url, index) for index, url in enumerate(urls)]


@router.post("/captionImage", response_model=SeedStarted)
async def start_job(body: SeedRequest, service: ServiceDep, caller: CallerDep) -> SeedStarted:
    """Queue a job; poll GET /captionImage for the result."""
    job_id = await service.submit(_inputs(body, service), CaptionOptions(), caller)
    return SeedStarted(id=job_id)


@router.get("/captionImage", response_model=list[SeedResult])
async def finished_jobs(
    service: ServiceDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    after: Annotated[str | None, Query(description="Only jobs after this job id.")] = None,
) -> list[SeedResult]:
    """Finished jobs still within the retention period, oldest first."""
    jobs = await service.list_jobs(caller, statuses=FINISHED, limit=limit, after=after)
    return [SeedResult(id=job.id, result=seed_captions(job)) for job in jobs]


@router.post("/captionImageBlocking", response_model=SeedFinished, responses=error_responses(504))
async def caption_blocking(body: SeedRequest, service: ServiceDep, caller: CallerDep) -> SeedFinished:
    """Queue a job and answer when it is finished (504 with the job id after the blocking timeout)."""
    job = await service.caption(_inputs(body, service), CaptionOptions(), caller)
    return SeedFinished(id=job.id, result=seed_captions(job))
