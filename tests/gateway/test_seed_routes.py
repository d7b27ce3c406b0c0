"""The original project's routes, exactly as an existing client uses them, against a real server."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest

from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.helpers import drawing, encode, noise
from tests.server import Server

# The transport matters to every test here: each runs in both modes.
pytestmark = pytest.mark.both_modes

CAT = encode(noise(320, 240, seed=11), "JPEG")
DOG = encode(drawing(200, 300, "white", "brown"), "PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected(engine: CaptionEngine, *images: bytes) -> list[str]:
    return engine.caption([decode_image(image) for image in images], CaptionOptions())


def test_the_original_client_flow(server: Server, engine: CaptionEngine) -> None:
    started = httpx.post(f"{server.url}/captionImage", json={"imgb64s": [b64(CAT), b64(DOG)]}, timeout=30)
    assert started.status_code == 200
    body = started.json()
    assert body["msg"] == "Job Started!"
    assert len(body["id"]) == 32
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finished = {job["id"]: job["result"] for job in httpx.get(f"{server.url}/captionImage").json()}
        if body["id"] in finished:
            break
        time.sleep(0.1)
    assert finished[body["id"]] == expected(engine, CAT, DOG)

    blocking = httpx.post(f"{server.url}/captionImageBlocking", json={"imgb64s": [b64(DOG)]}, timeout=60)
    assert blocking.status_code == 200
    assert blocking.json()["msg"] == "Job finished!"
    assert blocking.json()["result"] == expected(engine, DOG)
    assert set(blocking.json()) == {"id", "msg", "result"}


def test_data_urls_whitespace_and_image_urls(
    server: Server, engine: CaptionEngine, http_server: tuple[str, Path]
) -> None:
    wrapped = "data:image/jpeg;base64," + "\n".join(b64(CAT)[i : i + 76] for i in range(0, len(b64(CAT)), 76))
    response = httpx.post(f"{server.url}/captionImageBlocking", json={"imgb64s": [wrapped]}, timeout=60)
    assert response.json()["result"] == expected(engine, CAT)
    base, root = http_server
    (root / "cat.jpg").write_bytes(CAT)
    (root / "dog.png").write_bytes(DOG)
    for urls in ([f"{base}/cat.jpg", f"{base}/dog.png"], f"{base}/cat.jpg, {base}/dog.png"):
        response = httpx.post(f"{server.url}/captionImageBlocking", json={"imgurls": urls}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["result"] == expected(engine, CAT, DOG)


def test_finished_jobs_page_with_after_and_limit(server: Server) -> None:
    ids = [
        httpx.post(f"{server.url}/captionImageBlocking", json={"imgb64s": [b64(DOG)]}, timeout=60).json()["id"]
        for _ in range(3)
    ]
    listed = [job["id"] for job in httpx.get(f"{server.url}/captionImage", params={"after": ids[0]}).json()]
    assert listed[:2] == ids[1:]
    assert [
        job["id"] for job in httpx.get(f"{server.url}/captionImage", params={"after": ids[0], "limit": 1}).json()
    ] == [ids[1]]
