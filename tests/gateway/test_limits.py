"""Every configured limit is enforced before a job is queued, and its error names the limit and the image."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.conftest import AppFactory, finished_job, pending_images
from tests.helpers import drawing, encode, noise, png_declaring
from tests.server import Server

PNG = encode(drawing(40, 30, "white", "red"), "PNG")
JPEG = encode(noise(40, 30, seed=2), "JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_body_size_is_counted_as_it_arrives(make_client: AppFactory) -> None:
    client = make_client(max_body_bytes=2000)
    status, code, message = error(client.post("/captionImage", json={"imgb64s": [b64(PNG)] * 10}))
    assert (status, code) == (413, "input_too_large")
    assert "max_body_bytes limit of 2000 bytes" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: the chunked body itself is counted
        yield b'{"imgb64s": ["'
        for _ in range(10):
            yield b"A" * 400
        yield b'"]}'

    for path in ("/captionImage", "/v1/jobs", "/v1/captions", "/v1/hf"):
        response = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert error(response)[:2] == (413, "input_too_large"), path
    assert pending_images(client) == 0


@pytest.mark.both_modes
def test_per_image_bytes_pixels_and_formats(make_client: AppFactory) -> None:
    client = make_client(max_image_bytes=len(PNG) + 10, max_image_pixels=100_000, image_formats="PNG")
    big = encode(noise(200, 200, seed=1), "PNG")
    assert len(big) > len(PNG) + 10
    cases = [
        ({"imgb64s": [b64(PNG), b64(big)]}, 413, "image 1: ", "max_image_bytes limit"),
        ({"imgb64s": [b64(PNG), b64(PNG), b64(png_declaring(50_000, 50_000))]}, 413, "image 2: ", "too large"),
        ({"imgb64s": [b64(png_declaring(400, 300))]}, 413, "image 0: ", "max_image_pixels limit of 100000"),
    ]
    for body, status, index, limit in cases:
        got_status, _, message = error(client.post("/captionImage", json=body))
        assert got_status == status, message
        assert message.startswith(index), message
        assert limit in message
    upload = client.post("/v1/captions", files=[("images", ("a.png", PNG, "image/png")), ("images", ("b", big))])
    assert error(upload)[0] == 413
    assert error(upload)[2].startswith("image 1: ")
    raw = client.post("/v1/hf", content=png_declaring(50_000, 50_000))
    assert error(raw)[0] == 413
    assert pending_images(client) == 0
    png_only = make_client(image_formats="png")
    status, _, message = error(png_only.post("/v1/jobs", json={"images": [{"b64": b64(PNG)}, {"b64": b64(JPEG)}]}))
    assert (status, message) == (422, "image 1: JPEG images are not accepted (image_formats: PNG)")


def test_images_per_job_and_url_length(make_client: AppFactory) -> None:
    client = make_client(max_images_per_job=2)
    status, _, message = error(client.post("/v1/jobs", json={"images": [{"b64": b64(PNG)}] * 3}))
    assert (status, message) == (413, "3 images in one request; the max_images_per_job limit is 2")
    files = [("images", (f"{i}.png", PNG, "image/png")) for i in range(5)]
    assert error(client.post("/v1/captions", files=files))[0] == 413
    long_url = "https://example.invalid/" + "a" * 3000
    status, _, message = error(client.post("/v1/jobs", json={"images": [{"url": long_url}]}))
    assert status == 400
    assert "image 0: the URL is 3024 characters; the limit is 2048" in message


@pytest.mark.both_modes
def test_oddities_that_pass_the_header_check_fail_alone_in_the_worker(make_client: AppFactory) -> None:
    """A JPEG cut after its header is accepted, then fails with its own error while its job succeeds."""
    client = make_client()
    whole = encode(noise(300, 200, seed=5), "JPEG")
    truncated = whole[: len(whole) // 2]
    cut_in_header = whole[:300]
    refused = client.post("/v1/jobs", json={"images": [{"b64": b64(PNG)}, {"b64": b64(cut_in_header)}]})
    assert error(refused)[:2] == (422, "invalid_image")
    assert error(refused)[2].startswith("image 1: corrupt JPEG data")
    response = client.post("/v1/jobs", json={"images": [{"b64": b64(PNG)}, {"b64": b64(truncated)}]})
    assert response.status_code == 202
    job = finished_job(client, response.json()["id"])
    assert [image.state for image in job.images] == ["done", "failed"]
    assert job.images[1].error is not None
    assert job.images[1].error.code == "invalid_image"
    assert "truncated or corrupt JPEG data" in job.images[1].error.message


def test_a_real_server_refuses_a_large_body_without_reading_it(server: Server) -> None:
    """150 MB declared, a few bytes sent (a raw socket: HTTP clients refuse to send a lying length)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /captionImage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {150 * 1024 * 1024}\r\n\r\n".encode()
            + b'{"imgb64s": ['
        )
        reply = b""
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            reply += chunk
    reply_text = reply.decode()
    assert reply_text.startswith("HTTP/1.1 413")
    assert "max_body_bytes limit of 104857600 bytes" in reply_text
    assert httpx.get(f"{server.url}/readyz").status_code == 200
