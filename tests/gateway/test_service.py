"""Outcomes as any broker delivers them: an error for the whole job, then a late duplicate; an outcome the store
refused at first."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
from functools import partial
from pathlib import Path

import pytest

from blipq.contract.errors import StoreUnavailable
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.contract.requests import JobRequest
from blipq.gateway import sqlite_file
from blipq.gateway.broker import JobFinished
from blipq.gateway.jobs import Idempotency, JobStatus
from blipq.gateway.sqlite_store import SqliteStore
from blipq.gateway.store import open_store
from tests.gateway.conftest import AppFactory, app_store, finished_job, on_app
from tests.helpers import pictures
from tests.server import wait_until

# The transport matters to every test here: each runs in both modes.
pytestmark = pytest.mark.both_modes


def test_an_error_for_the_whole_job_fails_each_image_and_is_counted(make_client: AppFactory) -> None:
    client = make_client(model_running=False)
    body = {"images": [{"b64": base64.b64encode(image).decode()} for image in pictures(2)]}
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    service = client.app.state.service
    # record returns once the outcome is stored
    on_app(client, service.record, JobFinished(job_id, error=ErrorInfo("expired", "the request expired early")))
    on_app(client, service.record, JobFinished(job_id, [ImageResult(caption="late"), ImageResult(caption="late")]))
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert [image["error"]["code"] for image in job["images"]] == ["expired", "expired"]
    metrics = client.get("/metrics").text
    assert 'blipq_job_errors_total{code="expired"} 1.0' in metrics
    assert 'blipq_job_outcomes_total{first="false"} 1.0' in metrics


def test_an_outcome_the_store_could_not_record_is_recorded_once_the_store_takes_it(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database locked by another process while the job's outcome arrives: the outcome comes back (the reply
    is requeued; the embedded mode offers it again) and is recorded once the lock is gone."""
    monkeypatch.setattr(sqlite_file, "BUSY_TIMEOUT_S", 0.2)
    client = make_client(model_running=False)
    body = {"images": [{"b64": base64.b64encode(image).decode()} for image in pictures(2)]}
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    locker = sqlite3.connect(client.app.state.service.store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        client.app.state.run_model()
        wait_until(lambda: f"outcome of job {job_id} not stored" in caplog.text, timeout_s=60)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    job = finished_job(client, job_id)
    assert job.status == "succeeded"
    assert all(image.caption for image in job.images)


def test_a_store_that_cannot_be_written_answers_503_store_unavailable(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database locked by another process: a new job is refused with the store named as the cause (not
    the queue), and taken once the lock is gone."""
    monkeypatch.setattr(sqlite_file, "BUSY_TIMEOUT_S", 0.2)
    client = make_client()
    body = {"images": [{"b64": base64.b64encode(image).decode()} for image in pictures(1)]}
    locker = sqlite3.connect(client.app.state.service.store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        refused = client.post("/v1/jobs", json=body)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert "store error" in refused.json()["error"]["message"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert client.post("/v1/jobs", json=body).status_code == 202


def test_a_recovery_at_start_up_that_fails_is_logged_and_the_gateway_serves_on(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up recovery (replaying, or publishing what was never confirmed) runs in the background: a store
    that fails it is logged, not lost, and new jobs are still taken."""

    async def unreadable(*_args: object, **_kwargs: object) -> None:
        raise StoreUnavailable("store error at store.db: disk I/O error")

    monkeypatch.setattr(SqliteStore, "unfinished_jobs", unreadable)
    client = make_client()
    wait_until(lambda: "the unfinished jobs were not all dispatched again" in caplog.text, timeout_s=30)
    assert "disk I/O error" in caplog.text
    body = {"images": [{"b64": base64.b64encode(image).decode()} for image in pictures(1)]}
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    assert finished_job(client, job_id).status == "succeeded"


def test_jobs_stored_but_never_published_are_published_at_start_up_and_on_a_retry(
    make_client: AppFactory, tmp_path: Path
) -> None:
    """What a gateway killed between its store commit and the broker's confirm leaves behind: a job at start-up
    (in the store the next gateway opens), and a job whose client retries with the same Idempotency-Key."""
    images = pictures(3)
    left = open_store(f"sqlite:///{tmp_path}/store-0.db")  # the store the first app of make_client opens
    orphan, _ = asyncio.run(left.create([ImageInput(data=image) for image in images[:2]], CaptionOptions()))
    asyncio.run(left.close())
    client = make_client()
    assert finished_job(client, orphan).status is JobStatus.SUCCEEDED
    body = {"images": [{"b64": base64.b64encode(images[2]).decode()}]}
    fingerprint = hashlib.sha256(JobRequest.model_validate(body).model_dump_json().encode()).hexdigest()
    store = app_store(client)
    key = Idempotency("retry-me", fingerprint)
    keyed, _ = on_app(client, partial(store.create, [ImageInput(data=images[2])], CaptionOptions(), idempotency=key))
    retried = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me"})
    assert retried.json()["id"] == keyed
    assert finished_job(client, keyed).status is JobStatus.SUCCEEDED
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me"})  # published: not again
    assert again.json()["id"] == keyed
    assert on_app(client, store.unfinished_jobs) == []  # nothing left to publish or run
