"""API keys: every job route needs one when keys are on, health routes do not, and jobs are private to their key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from blipq.contract.errors import BlipqError
from blipq.embedded import InProcessBroker
from blipq.gateway.app import create_app
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import open_store
from blipq.inference.batcher import BatcherConfig
from blipq.inference.engine import CaptionEngine
from blipq.inference.metrics import InferenceMetrics
from tests.gateway.conftest import AppFactory, stored_job
from tests.helpers import drawing, encode

PNG = base64.b64encode(encode(drawing(20, 20, "white", "red"), "PNG")).decode()
ALICE, BOB = "alice-key-0123456789", "bob-key-9876543210"

PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/captionImage", {"json": {"imgb64s": [PNG]}}),
    ("get", "/captionImage", {}),
    ("post", "/captionImageBlocking", {"json": {"imgb64s": [PNG]}}),
    ("post", "/v1/jobs", {"json": {"images": [{"b64": PNG}]}}),
    ("get", "/v1/jobs", {}),
    ("get", "/v1/jobs/0123456789abcdef0123456789abcdef", {}),
    ("delete", "/v1/jobs/0123456789abcdef0123456789abcdef", {}),
    ("post", "/v1/captions", {"json": {"images": [{"b64": PNG}]}}),
    ("post", "/v1/hf", {"content": base64.b64decode(PNG)}),
]


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    return make_client(api_keys=f"{ALICE},{BOB}", blocking_timeout_s=0.2, model_running=False)


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_each_protected_route_needs_a_valid_key(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    missing = client.request(method, path, **kwargs)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"] == {
        "code": "unauthorized",
        "message": "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>",
    }
    wrong = client.request(method, path, headers={"Authorization": "Bearer not-a-key"}, **kwargs)
    assert (wrong.status_code, wrong.json()["error"]["message"]) == (401, "the API key is not valid")
    for headers in ({"Authorization": f"Bearer {ALICE}"}, {"X-API-Key": BOB}):
        # Past authentication: a job route's own answer (a 504 for blocking ones: no worker here).
        assert client.request(method, path, headers=headers, **kwargs).status_code in (200, 202, 404, 504)


def test_health_metrics_and_docs_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # open, and honest: no worker
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/").status_code == 200  # the page asks for a key itself, when one is needed
    assert client.get("/page/page.js").status_code == 200


def test_one_key_cannot_see_or_cancel_anothers_job(client: TestClient) -> None:
    alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
    job_id = client.post("/v1/jobs", json={"images": [{"b64": PNG}]}, headers=alice).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    for method in ("get", "delete"):
        response = client.request(method, f"/v1/jobs/{job_id}", headers=bob)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")
    assert [job["id"] for job in client.get("/v1/jobs", headers=alice).json()["jobs"]] == [job_id]
    assert client.get("/v1/jobs", headers=bob).json()["jobs"] == []
    # Alice's job id as Bob's cursor is as unknown as any other: its existence does not leak.
    by_cursor = client.get("/v1/jobs", params={"cursor": job_id}, headers=bob)
    unknown = client.get("/v1/jobs", params={"cursor": "no-such-job"}, headers=bob)
    assert (by_cursor.status_code, by_cursor.json()["error"]["code"]) == (unknown.status_code, "job_not_found")
    assert client.get("/v1/jobs", params={"cursor": job_id}, headers=alice).json()["jobs"] == []
    client.delete(f"/v1/jobs/{job_id}", headers=alice)  # finished (cancelled): listed on the seed route
    assert [job["id"] for job in client.get("/captionImage", headers=alice).json()] == [job_id]
    assert client.get("/captionImage", headers=bob).json() == []
    stored = stored_job(client, job_id)
    assert stored.owner is not None
    assert ALICE not in stored.owner  # the store holds a digest prefix, never the key


def test_keys_file_with_plain_and_hashed_keys(make_client: AppFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    hashed = hashlib.sha256(b"hashed-key-abc").hexdigest()
    keys.write_text(f"# team keys\nplain-key-xyz\n\nsha256:{hashed}  # ci\n")
    client = make_client(api_keys_file=keys)
    for key in ("plain-key-xyz", "hashed-key-abc"):
        assert client.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/v1/jobs", headers={"X-API-Key": hashed}).status_code == 401


def test_a_broken_keys_file_stops_startup_with_a_clear_message(tmp_path: Path, engine: CaptionEngine) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sha256:abc\n")
    settings = GatewaySettings(store=f"sqlite:///{tmp_path}/store.db", api_keys_file=keys)
    store = open_store(settings.store)
    broker = InProcessBroker(engine, BatcherConfig(), store, model="tiny", metrics=InferenceMetrics())
    try:
        with pytest.raises(BlipqError, match=r"keys\.txt:1: sha256: must be followed by 64 hex digits"):
            create_app(settings, store, broker)
        with pytest.raises(BlipqError, match="cannot read the API keys file"):
            create_app(GatewaySettings(store=settings.store, api_keys_file=tmp_path / "missing.txt"), store, broker)
    finally:
        asyncio.run(store.close())
