"""The /v1 API: jobs, synchronous captions (JSON or uploads), and a Hugging Face Inference endpoint."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from blipq.contract.errors import ImageFailed, InputTooLarge, InvalidInput, InvalidOptions
from blipq.contract.inputs import check_count, from_base64, from_bytes, from_spec
from blipq.contract.messages import ImageInput
from blipq.contract.options import CaptionOptions
from blipq.contract.requests import JobRequest
from blipq.gateway.auth import CallerDep
from blipq.gateway.deps import ServiceDep
from blipq.gateway.jobs import Idempotency, JobStatus
from blipq.gateway.json_body import is_json, read_json, unsupported, validate
from blipq.gateway.schemas import (
    JOB_ROUTE_ERRORS,
    GeneratedText,
    HuggingFaceRequest,
    JobList,
    JobView,
    error_responses,
)
from blipq.gateway.service import Service

router = APIRouter(
    prefix="/v1",
    tags=["v1"],
    responses=JOB_ROUTE_ERRORS,
)


def _job_inputs(body: JobRequest, service: Service) -> list[ImageInput]:
    check_count(len(body.images), service.settings.max_images_per_job)
    return [from_spec(spec, index, service.image_policy) for index, spec in enumerate(body.images)]


@router.post("/jobs", status_code=202, response_model=JobView)
async def create_job(
    body: JobRequest,
    response: Response,
    service: ServiceDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Retrying with the same key and body returns the same job; a different body is refused.",
        ),
    ] = None,
) -> JobView:
    """Queue a job; its URL is in the Location header."""
    idempotency = None
    if idempotency_key is not None:
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        idempotency = Idempotency(idempotency_key, fingerprint)
    job_id = await service.submit(_job_inputs(body, service), body.options, caller, idempotency)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return JobView.of(await service.job(job_id, caller))


@router.get("/jobs/{job_id}", response_model=JobView)
async def get_job(job_id: str, service: ServiceDep, caller: CallerDep) -> JobView:
    return JobView.of(await service.job(job_id, caller))


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    service: ServiceDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobList:
    """Jobs oldest first."""
    jobs = await service.list_jobs(caller, statuses=[status] if status else None, limit=limit + 1, after=cursor)
    page = jobs[:limit]
    next_cursor = page[-1].id if len(jobs) > limit else None
    return JobList(jobs=[JobView.of(job) for job in page], next_cursor=next_cursor)


@router.delete("/jobs/{job_id}", response_model=JobView)
async def cancel_job(job_id: str, service: ServiceDep, caller: CallerDep) -> JobView:
    """Cancel the images not captioned yet; a finished job is returned unchanged."""
    return JobView.of(await service.cancel(job_id, caller))


@router.post(
    "/captions",
    response_model=JobView,
    responses=error_responses(504),
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "options": {"type": "string", "description": "CaptionOptions as JSON"},
                        },
                    }
                },
            },
            "required": True,
        }
    },
)
async def caption_now(request: Request, service: ServiceDep, caller: CallerDep) -> JobView:
    """Caption synchronously: a JSON body like POST /v1/jobs, or multipart file uploads."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        images, options = await _multipart(request, service)
    elif is_json(content_type):
        body = validate(JobRequest, read_json(await request.body()))
        images, options = _job_inputs(body, service), body.options
    else:
        raise unsupported(content_type, "JSON (Content-Type: application/json) or multipart/form-data uploads")
    return JobView.of(await service.caption(images, options, caller))


@router.post(
    "/hf",
    response_model=list[GeneratedText],
    responses=error_responses(504),
    openapi_extra={
        "requestBody": {
            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
)
async def hugging_face_image_to_text(request: Request, service: ServiceDep, caller: CallerDep) -> list[GeneratedText]:
    """Hugging Face Inference compatible: raw image bytes in (or JSON {"inputs": base64}), generated text out."""
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        payload = validate(HuggingFaceRequest, read_json(body))
        if payload.parameters:
            raise InvalidOptions("parameters are not supported here; use POST /v1/captions for options")
        image = from_base64(payload.inputs, 0, service.image_policy)
    else:
        image = from_bytes(body, 0, service.image_policy)
    job = await service.caption([image], CaptionOptions(), caller)
    outcome = job.images[0]
    if outcome.error is not None:
        raise ImageFailed(outcome.error.code, outcome.error.message)
    return [GeneratedText(generated_text=outcome.caption or "")]


async def _multipart(request: Request, service: Service) -> tuple[list[ImageInput], CaptionOptions]:
    limit = service.settings.max_images_per_job
    try:
        # max_files bounds what the parser keeps before any count check could run.
        form = await request.form(max_files=limit, max_fields=16)
    except HTTPException as exc:
        if exc.status_code != 400:
            raise  # 413 from the body size limit
        if "Too many files" in str(exc.detail):
            message = f"more than {limit} files in one request; the max_images_per_job limit is {limit}"
            raise InputTooLarge(message) from None
        raise InvalidInput(f"the multipart body cannot be parsed: {exc.detail}") from None
    uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    check_count(len(uploads), limit)
    images = [from_bytes(await upload.read(), index, service.image_policy) for index, upload in enumerate(uploads)]
    raw_options = form.get("options")
    if raw_options is None:
        return images, CaptionOptions()
    if not isinstance(raw_options, str):
        raise InvalidInput("the options form field must be JSON text")
    return images, validate(CaptionOptions, read_json(raw_options.encode()))
