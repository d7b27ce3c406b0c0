from __future__ import annotations

import base64
import time

import httpx
import pytest
from huggingface_hub import InferenceClient

from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.helpers import drawing, encode, noise
from tests.server import Server, wait_until

# The transport matters to every test here: each runs in both modes.
pytestmark = pytest.mark.both_modes

PHOTO = encode(noise(300, 200, seed=21), "JPEG")
SKETCH = encode(drawing(150, 150, "yellow", "black"), "PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_job_lifecycle(server: Server, engine: CaptionEngine) -> None:
    options = {"num_beams": 1, "prompt": "", "max_length": 12}
    created = httpx.post(
        f"{server.url}/v1/jobs", json={"images": [{"b64": b64(PHOTO)}, {"b64": b64(SKETCH)}], "options": options}
    )
    assert created.status_code == 202
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/jobs/{job_id}"
    assert created.json()["status"] in ("queued", "running", "succeeded")
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}").json())["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    wanted = engine.caption([decode_image(PHOTO), decode_image(SKETCH)], CaptionOptions(**options))
    assert [image["caption"] for image in job["images"]] == wanted
    assert [image["status"] for image in job["images"]] == ["done", "done"]
    assert job["finished_at"] >= job["started_at"] >= job["created_at"]
    assert httpx.delete(f"{server.url}/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_listing_with_a_cursor(server: Server) -> None:
    for _ in range(2):  # at least two jobs, whichever tests ran before on this server
        body = {"images": [{"b64": b64(encode(drawing(40, 30, "white", "red"), "PNG"))}]}
        assert httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30).status_code == 202
    first = httpx.get(f"{server.url}/v1/jobs", params={"limit": 1}).json()
    assert len(first["jobs"]) == 1
    second = httpx.get(f"{server.url}/v1/jobs", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert second["jobs"][0]["id"] != first["jobs"][0]["id"]
    succeeded = httpx.get(f"{server.url}/v1/jobs", params={"status": "succeeded"}).json()["jobs"]
    assert all(job["status"] == "succeeded" for job in succeeded)


def test_cancel_a_queued_job(server: Server) -> None:
    late_outcomes = late_outcome_count(server)
    many = [{"b64": b64(PHOTO)}] * 60
    job_id = httpx.post(f"{server.url}/v1/jobs", json={"images": many}).json()["id"]
    cancelled = httpx.delete(f"{server.url}/v1/jobs/{job_id}").json()
    assert cancelled["status"] == "cancelled"
    assert "cancelled" in [image["status"] for image in cancelled["images"]]
    # The job still runs (cancelling is best effort); its outcome arrives late and changes nothing.
    wait_until(lambda: late_outcome_count(server) > late_outcomes)
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}").json()["status"] == "cancelled"


def late_outcome_count(server: Server) -> float:
    """How many job outcomes the gateway received after the job already had one (here: its cancellation)."""
    metrics = httpx.get(f"{server.url}/metrics").text
    late = [line for line in metrics.splitlines() if line.startswith('blipq_job_outcomes_total{first="false"}')]
    return float(late[0].split()[-1]) if late else 0.0


def test_synchronous_captions_json_and_upload(server: Server, engine: CaptionEngine) -> None:
    wanted = engine.caption([decode_image(PHOTO), decode_image(SKETCH)], CaptionOptions())
    as_json = httpx.post(
        f"{server.url}/v1/captions", json={"images": [{"b64": b64(PHOTO)}, {"b64": b64(SKETCH)}]}, timeout=60
    )
    assert as_json.status_code == 200, as_json.text
    assert [image["caption"] for image in as_json.json()["images"]] == wanted
    upload = httpx.post(
        f"{server.url}/v1/captions",
        files=[("images", ("a.jpg", PHOTO, "image/jpeg")), ("images", ("b.png", SKETCH, "image/png"))],
        data={"options": '{"num_beams": 1}'},
        timeout=60,
    )
    assert upload.status_code == 200, upload.text
    greedy = engine.caption([decode_image(PHOTO), decode_image(SKETCH)], CaptionOptions(num_beams=1))
    assert [image["caption"] for image in upload.json()["images"]] == greedy


def test_hugging_face_inference_client(server: Server, engine: CaptionEngine) -> None:
    client = InferenceClient(model=f"{server.url}/v1/hf", timeout=60)
    output = client.image_to_text(SKETCH)
    assert output.generated_text == engine.caption([decode_image(SKETCH)], CaptionOptions())[0]


def test_health_readiness_metrics_docs(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready"
    assert ready["mode"] == server.mode
    if server.mode == "rabbitmq":
        assert ready["workers"] == 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "blipq_jobs_created_total" in metrics
    assert "blipq_queue_depth" in metrics
    assert "blipq_publish_seconds_count" in metrics
    # The inference side's metrics: served with the gateway's in the embedded mode, by the worker otherwise.
    inference = metrics if server.worker_metrics_url is None else httpx.get(server.worker_metrics_url).text
    assert "blipq_images_captioned_total" in inference
    assert "blipq_batch_size_bucket" in inference
    assert httpx.get(f"{server.url}/docs").status_code == 200
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/captionImage", "/captionImageBlocking", "/v1/jobs", "/v1/captions", "/v1/hf"} <= set(paths)
