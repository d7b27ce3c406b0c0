"""Every route answers bad input with a 4xx and the JSON error body, and keeps serving."""

from __future__ import annotations

import base64

import httpx
import pytest
from fastapi.testclient import TestClient

from blipq.gateway.rabbit import RabbitBroker
from tests.gateway.conftest import AppFactory
from tests.helpers import drawing, encode
from tests.server import Server, wait_until

PNG = base64.b64encode(encode(drawing(20, 20, "white", "red"), "PNG")).decode()
JSON = {"content-type": "application/json"}
DEEP = b"[" * 5000 + b"]" * 5000  # 10 kB that overflows a recursive JSON decoder


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    """The app in-process with the model held back: nothing is captioned."""
    return make_client(blocking_timeout_s=0.5, max_images_per_job=3, model_running=False)


BAD_REQUESTS = [
    ("post", "/captionImage", {"json": {"imgb64s": ["!!!not base64!!!"]}}, 400, "invalid_input", "image 0: not valid base64"),
    ("post", "/captionImage", {"json": {"imgb64s": []}}, 400, "invalid_input", "no images given"),
    ("post", "/captionImage", {"json": {}}, 422, "invalid_request", "give imgb64s"),
    ("post", "/captionImage", {"json": {"imgb64s": "abc"}}, 422, "invalid_request", "imgb64s: Input should be a valid list"),
    ("post", "/captionImage", {"json": {"imgb64s": [PNG], "imgurls": ["http://127.0.0.1:9/a"]}}, 422, "invalid_request", "not both"),
    ("post", "/captionImage", {"json": {"imgb64s": [PNG, base64.b64encode(b"hello world").decode()]}}, 422, "invalid_image", "image 1: not a supported image (got text"),
    ("post", "/captionImage", {"json": {"imgb64s": [PNG] * 4}}, 413, "input_too_large", "4 images in one request; the max_images_per_job limit is 3"),
    ("post", "/captionImage", {"json": {"imgurls": ["file:///etc/passwd"]}}, 400, "invalid_input", "is not an http or https URL with a host"),
    ("post", "/captionImage", {"json": {"imgurls": ["http://"]}}, 400, "invalid_input", "is not an http or https URL with a host"),
    ("post", "/v1/jobs", {"json": {"images": [{"url": "https:///a.png"}]}}, 400, "invalid_input", "is not an http or https URL with a host"),
    ("post", "/v1/jobs", {"json": {"images": [{"url": "http://[::1/a.png"}]}}, 400, "invalid_input", "is not an http or https URL with a host"),
    ("post", "/captionImage", {"content": b"{not json", "headers": JSON}, 400, "invalid_input", "the body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("post", "/v1/captions", {"content": b"{not json", "headers": JSON}, 400, "invalid_input", "the body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("post", "/v1/jobs", {"content": b'{"images": [{"b64": "\xff"}]}', "headers": JSON}, 400, "invalid_input", "the body is not valid UTF-8 (byte 21 is 0xff)"),
    ("post", "/v1/captions", {"content": b'{"images": [{"b64": "\xff"}]}', "headers": JSON}, 400, "invalid_input", "the body is not valid UTF-8 (byte 21 is 0xff)"),
    ("post", "/v1/jobs", {"content": DEEP, "headers": JSON}, 400, "invalid_input", "the JSON body is nested too deeply"),
    ("post", "/captionImageBlocking", {"content": DEEP, "headers": JSON}, 400, "invalid_input", "the JSON body is nested too deeply"),
    ("post", "/v1/captions", {"content": DEEP, "headers": JSON}, 400, "invalid_input", "the JSON body is nested too deeply"),
    ("post", "/v1/hf", {"content": DEEP, "headers": JSON}, 400, "invalid_input", "the JSON body is nested too deeply"),
    ("post", "/v1/captions", {"files": [("images", ("a.png", base64.b64decode(PNG), "image/png"))], "data": {"options": DEEP.decode()}}, 400, "invalid_input", "the JSON body is nested too deeply"),
    ("post", "/v1/jobs", {"content": b'{"images": []}', "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type", "this route takes JSON (Content-Type: application/json)"),
    ("post", "/captionImage", {"content": b'{"imgb64s": []}', "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", "the body is 'text/plain'"),
    ("post", "/v1/captions", {"content": b'{"images": []}', "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", "or multipart/form-data uploads"),
    ("post", "/v1/jobs", {"content": b'{"images": []}'}, 400, "invalid_input", "no images given"),
    ("post", "/captionImageBlocking", {"json": {"imgb64s": [""]}}, 422, "invalid_image", "image 0: image is empty"),
    ("post", "/v1/jobs", {"json": {"images": [{"b64": PNG, "url": "http://127.0.0.1:9/"}]}}, 422, "invalid_request", "exactly one of b64 or url"),
    ("post", "/v1/jobs", {"json": {"images": [{"b64": PNG}], "options": {"num_beams": 0}}}, 422, "invalid_request", "options.num_beams"),
    ("post", "/v1/jobs", {"json": {"images": [{"b64": PNG}], "options": {"min_length": 50}}}, 422, "invalid_request", "must not exceed max_length"),
    ("post", "/v1/jobs", {"json": {"images": [{"b64": PNG}], "colour": "red"}}, 422, "invalid_request", "Extra inputs"),
    ("get", "/v1/jobs/0123456789abcdef0123456789abcdef", {}, 404, "job_not_found", "no job with id"),
    ("delete", "/v1/jobs/unknown", {}, 404, "job_not_found", "no job with id 'unknown'"),
    ("get", "/v1/jobs?cursor=unknown", {}, 404, "job_not_found", "cursor 'unknown'"),
    ("get", "/v1/jobs?status=bogus", {}, 422, "invalid_request", "status: Input should be"),
    ("get", "/captionImage?limit=0", {}, 422, "invalid_request", "limit: Input should be greater than or equal to 1"),
    ("post", "/v1/jobs", {"content": b"[1, 2]", "headers": JSON}, 422, "invalid_request", "body: Input should be a valid dictionary"),
    ("post", "/v1/captions", {"content": b"[1, 2]", "headers": JSON}, 422, "invalid_request", "body: Input should be a valid dictionary"),
    ("post", "/v1/captions", {"json": {"images": [{"b64": PNG, "url": "http://127.0.0.1:9/"}]}}, 422, "invalid_request", "exactly one of b64 or url"),
    ("post", "/v1/captions", {"files": [("images", ("a.png", base64.b64decode(PNG), "image/png"))], "data": {"options": '{"num_beams": 0}'}}, 422, "invalid_request", "num_beams: Input should be greater than or equal to 1"),
    ("post", "/v1/captions", {"files": [("images", ("a.txt", b"just text", "text/plain"))]}, 422, "invalid_image", "image 0: not a supported image"),
    ("post", "/v1/captions", {"files": [("images", ("a.png", base64.b64decode(PNG), "image/png"))], "data": {"options": "{bad"}}, 400, "invalid_input", "not valid JSON"),
    ("post", "/v1/hf", {"content": b"<svg xmlns='http://www.w3.org/2000/svg'/>"}, 422, "invalid_image", "got an SVG document"),
    ("post", "/v1/hf", {"content": b""}, 422, "invalid_image", "image is empty"),
    ("post", "/v1/hf", {"json": {"inputs": PNG, "parameters": {"max_new_tokens": 5}}}, 422, "invalid_options", "parameters are not supported"),
    ("post", "/v1/hf", {"json": {"image": PNG}}, 422, "invalid_request", "inputs: Field required"),
    ("post", "/v1/hf", {"json": {"inputs": 5}}, 422, "invalid_request", "inputs: Input should be a valid string"),
    ("get", "/no/such/route", {}, 404, "not_found", "Not Found"),
    ("put", "/captionImage", {}, 405, "method_not_allowed", "Method Not Allowed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "message"),
    BAD_REQUESTS,
    ids=[f"{r[1]}-{r[4]}" for r in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_json_error(
    client: TestClient, method: str, path: str, kwargs: dict[str, object], status: int, code: str, message: str
) -> None:
    response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert response.json()["error"]["code"] == code
    assert message in response.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.both_modes
def test_blocking_timeout_is_504_with_the_job_id(client: TestClient) -> None:
    response = client.post("/captionImageBlocking", json={"imgb64s": [PNG]})
    assert response.status_code == 504
    job_id = response.json()["id"]
    assert response.json()["error"]["code"] == "timeout"
    assert f"poll GET /v1/jobs/{job_id}" in response.json()["error"]["message"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert client.post("/v1/captions", json={"images": [{"b64": PNG}]}).status_code == 504
    assert client.post("/v1/hf", content=base64.b64decode(PNG)).status_code == 504


@pytest.mark.both_modes
def test_a_stopped_model_is_503_on_readyz(make_client: AppFactory) -> None:
    """Embedded, a job cannot be accepted without the model (503, nothing left behind); over RabbitMQ it is
    accepted, and waits in the broker for a worker."""
    client = make_client()
    assert client.get("/readyz").status_code == 200
    client.app.state.stop_model()
    over_rabbitmq = isinstance(client.app.state.service.broker, RabbitBroker)
    wait_until(lambda: client.get("/readyz").status_code == 503)
    response = client.get("/readyz")
    assert response.json()["error"]["code"] == "model_unavailable"
    message = "no worker consumes blipq.caption" if over_rabbitmq else "the model's thread is not running"
    assert message in response.json()["error"]["message"]
    submitted = client.post("/v1/jobs", json={"images": [{"b64": PNG}]})
    if over_rabbitmq:
        assert submitted.status_code == 202
        assert client.get(f"/v1/jobs/{submitted.json()['id']}").json()["status"] == "queued"
    else:
        assert (submitted.status_code, submitted.json()["error"]["code"]) == (503, "model_unavailable")
        assert client.get("/v1/jobs").json()["jobs"] == []  # a refused job leaves nothing behind


def test_a_real_server_survives_garbage(server: Server) -> None:
    garbage = (b"\x00\xff" * 1000, b'{"imgb64s": [1, 2, 3]}', b'{"imgb64s": ["' + b"A" * 100_000 + b'"]}', DEEP)
    for path in ("/captionImage", "/v1/jobs", "/v1/captions", "/v1/hf"):
        for body in garbage:
            response = httpx.post(f"{server.url}{path}", content=body, headers=JSON, timeout=30)
            assert 400 <= response.status_code < 500, (path, response.text)
            assert "error" in response.json()
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert "Traceback" not in server.log_path.read_text()
