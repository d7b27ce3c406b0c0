"""Outcomes as any broker delivers them: an error for the whole job, then a late duplicate."""

from __future__ import annotations

import base64

from blipq.contract.messages import ErrorInfo, ImageResult
from blipq.gateway.broker import JobFinished
from tests.gateway.conftest import AppFactory
from tests.helpers import pictures


def test_an_error_for_the_whole_job_fails_each_image_and_is_counted(make_client: AppFactory) -> None:
    client = make_client(model_running=False)
    body = {"images": [{"b64": base64.b64encode(image).decode()} for image in pictures(2)]}
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    service = client.app.state.service
    # record returns at once; its future is done when the outcome is stored
    service.record(
        JobFinished(job_id, error=ErrorInfo("expired", "the request expired before a worker took it"))
    ).result()
    service.record(JobFinished(job_id, [ImageResult(caption="late"), ImageResult(caption="late")])).result()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert [image["error"]["code"] for image in job["images"]] == ["expired", "expired"]
    metrics = client.get("/metrics").text
    assert 'blipq_job_errors_total{code="expired"} 1.0' in metrics
    assert 'blipq_job_outcomes_total{first="false"} 1.0' in metrics
