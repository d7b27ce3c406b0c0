"""Backpressure (429 + Retry-After while the queue is deep), per-key rate limits, and Idempotency-Key."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from blipq.gateway.service import QUEUE_FULL_RETRY_AFTER_S
from tests.gateway.conftest import AppFactory, pending_images
from tests.helpers import pictures
from tests.server import wait_until

IMAGES = [base64.b64encode(data).decode() for data in pictures(3)]


@pytest.mark.both_modes
def test_a_flood_gets_429_with_retry_after_and_the_service_recovers(make_client: AppFactory) -> None:
    client = make_client(max_queue_depth=5, model_running=False)
    body = {"imgb64s": IMAGES[:2]}
    answers = [client.post("/captionImage", json=body) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200, 200, 429, 429, 429, 429]
    refused = answers[-1]
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "queue_full"
    assert "max_queue_depth limit of 5" in refused.json()["error"]["message"]
    assert pending_images(client) == 4  # refused jobs stored nothing
    assert "blipq_jobs_refused_queue_full_total 4.0" in client.get("/metrics").text
    assert_recovers(client, body, jobs_before=2)


@pytest.mark.rabbitmq_only
def test_a_request_queue_full_at_the_broker_gets_429_and_the_service_recovers(make_client: AppFactory) -> None:
    """RabbitMQ itself refuses the publish (x-max-length with reject-publish: a nack), far below the
    gateway's own depth limit: the client gets 429, not 503, and the channel stays usable for the rest."""
    client = make_client(max_queued_messages=2, model_running=False)
    body = {"imgb64s": IMAGES[:1]}
    # A quorum queue takes one message past x-max-length before it refuses (RabbitMQ's documented overshoot).
    answers = [client.post("/captionImage", json=body) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "queue_full"
    assert "the request queue is full (x-max-length)" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == str(QUEUE_FULL_RETRY_AFTER_S)
    assert pending_images(client) == 3  # the refused job left nothing behind
    assert_recovers(client, body, jobs_before=3)


def assert_recovers(client: TestClient, body: dict[str, list[str]], jobs_before: int) -> None:
    """Once the held-back model runs, the jobs accepted finish and a new job is taken and finished."""
    client.app.state.run_model()
    wait_until(lambda: pending_images(client) == 0, timeout_s=60)
    assert client.post("/captionImage", json=body).status_code == 200
    wait_until(lambda: pending_images(client) == 0, timeout_s=60)
    assert len(client.get("/captionImage").json()) == jobs_before + 1


def test_rate_limit_per_key_with_retry_after(make_client: AppFactory) -> None:
    client = make_client(api_keys="key-one,key-two", rate_limit="3/minute")
    one, two = {"X-API-Key": "key-one"}, {"X-API-Key": "key-two"}
    assert [client.get("/v1/jobs", headers=one).status_code for _ in range(4)] == [200, 200, 200, 429]
    limited = client.get("/v1/jobs", headers=one)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert client.get("/v1/jobs", headers=two).status_code == 200  # each key has its own budget
    assert client.get("/healthz").status_code == 200  # health is never limited


@pytest.mark.both_modes
def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(make_client: AppFactory) -> None:
    client = make_client(model_running=False)
    body = {"images": [{"b64": IMAGES[0]}], "options": {"num_beams": 1}}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "upload-42"})
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "upload-42"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert pending_images(client) == 1
    other = client.post(
        "/v1/jobs", json={**body, "options": {"num_beams": 2}}, headers={"Idempotency-Key": "upload-42"}
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert first.json()["id"] in other.json()["error"]["message"]
    fresh = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "upload-43"})
    assert fresh.json()["id"] != first.json()["id"]
    assert client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "x" * 256}).status_code == 422
