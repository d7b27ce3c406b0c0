"""Two `blipq serve --broker` gateways on one PostgreSQL store and one `blipq worker`, as real processes on a real
RabbitMQ and a real PostgreSQL: every gateway answers for every job, one Idempotency-Key is one job on both, and a
gateway killed for good strands no reply; a store outage is 503 and passes."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.helpers import pictures
from tests.postgres import admin_url
from tests.server import Server, WorkerProcess, get_job, submit_job, wait_until


@pytest.fixture
def worker(amqp_url: str, tiny_checkpoint: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    """Not started: each test starts it when the queue should begin to drain."""
    process = WorkerProcess(tiny_checkpoint, amqp_url, tmp_path / "worker.log", "--max-batch", "4")
    yield process
    process.stop()


def gateway(name: str, tiny_checkpoint: Path, tmp_path: Path, amqp_url: str, postgres_url: str) -> Server:
    return Server(
        tiny_checkpoint, tmp_path / name, "--broker", amqp_url, "--gateway-id", name, store=postgres_url
    ).start(ready=False)


@pytest.fixture
def gateways(
    amqp_url: str, postgres_url: str, tiny_checkpoint: Path, tmp_path: Path
) -> Iterator[tuple[Server, Server]]:
    """Gateways A and B on one store and one broker, connected to both (jobs are taken: 202)."""
    started = [gateway(name, tiny_checkpoint, tmp_path, amqp_url, postgres_url) for name in ("a", "b")]
    try:
        for server in started:
            wait_until(lambda server=server: "no worker consumes" in readiness(server), timeout_s=60)
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def readiness(server: Server) -> str:
    return httpx.get(f"{server.url}/readyz", timeout=10).text


def images_b64(images: list[bytes]) -> list[str]:
    return [base64.b64encode(image).decode() for image in images]


def first_outcomes(server: Server) -> float:
    """The outcomes this gateway recorded first (its share of the shared reply queue)."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(r'^blipq_job_outcomes_total\{first="true"\} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def captions(job: dict[str, Any]) -> list[str]:
    return [image["caption"] for image in job["images"]]


def test_a_job_taken_by_one_gateway_is_listed_read_and_waited_on_through_the_other(
    gateways: tuple[Server, Server], worker: WorkerProcess, engine: CaptionEngine
) -> None:
    a, b = gateways
    images = pictures(3)
    job_id = submit_job(a, images)
    assert get_job(b, job_id)["status"] == "queued"
    assert [job["id"] for job in httpx.get(f"{b.url}/v1/jobs", timeout=10).json()["jobs"]] == [job_id]
    worker.start()
    wait_until(lambda: get_job(b, job_id)["status"] == "succeeded", timeout_s=120)
    expected = engine.caption([decode_image(image) for image in images], CaptionOptions())
    assert captions(get_job(b, job_id)) == expected
    assert httpx.get(f"{b.url}/captionImage", timeout=10).json() == [{"id": job_id, "result": expected}]
    # Blocking requests on B, whose replies both gateways consume: each is woken, whoever recorded its outcome.
    answers: list[httpx.Response] = []
    body = {"imgb64s": images_b64(pictures(2))}
    requests = [
        threading.Thread(
            target=lambda: answers.append(httpx.post(f"{b.url}/captionImageBlocking", json=body, timeout=120))
        )
        for _ in range(8)
    ]
    recorded_by_a = first_outcomes(a)
    for request in requests:
        request.start()
    for request in requests:
        request.join()
    assert [answer.status_code for answer in answers] == [200] * 8
    assert first_outcomes(a) > recorded_by_a  # some of B's waiters were woken by A's notice
    cancelled = submit_job(b, pictures(1))
    assert httpx.delete(f"{a.url}/v1/jobs/{cancelled}", timeout=10).json()["id"] == cancelled
    assert get_job(b, cancelled)["status"] in ("cancelled", "succeeded")


def test_one_idempotency_key_on_both_gateways_is_one_job(gateways: tuple[Server, Server]) -> None:
    a, b = gateways
    body = {"images": [{"b64": image} for image in images_b64(pictures(2))]}
    key = {"Idempotency-Key": "upload-7"}
    answers: dict[str, httpx.Response] = {}
    both = [
        threading.Thread(target=lambda server=server: answers.update({server.url: post(server, body, key)}))
        for server in (a, b)
    ]
    for request in both:
        request.start()
    for request in both:
        request.join()
    assert {answer.status_code for answer in answers.values()} == {202}
    assert len({answer.json()["id"] for answer in answers.values()}) == 1
    assert len(httpx.get(f"{a.url}/v1/jobs", timeout=10).json()["jobs"]) == 1
    other = {"images": body["images"][:1]}
    conflict = post(b, other, key)  # the same key with another body, on either gateway
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (422, "idempotency_conflict")


def post(server: Server, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/jobs", json=body, headers=headers, timeout=30)


def test_a_gateway_killed_for_good_strands_no_reply(gateways: tuple[Server, Server], worker: WorkerProcess) -> None:
    a, b = gateways
    ids = [submit_job(a, pictures(4)[index : index + 2]) for index in (0, 2)]
    broken: list[httpx.HTTPError] = []

    def wait_on_a() -> None:
        try:
            httpx.post(f"{a.url}/captionImageBlocking", json={"imgb64s": images_b64(pictures(1))}, timeout=60)
        except httpx.HTTPError as exc:
            broken.append(exc)

    waiting = threading.Thread(target=wait_on_a)
    waiting.start()
    wait_until(lambda: len(httpx.get(f"{b.url}/v1/jobs", timeout=10).json()["jobs"]) == 3, timeout_s=30)
    a.kill()  # with its jobs queued and a request waiting
    waiting.join()
    assert len(broken) == 1  # its connection broke; its job is the third
    worker.start()
    jobs = httpx.get(f"{b.url}/v1/jobs", timeout=10).json()["jobs"]
    for job in jobs:
        wait_until(lambda job=job: get_job(b, job["id"])["status"] == "succeeded", timeout_s=120)
    assert {job["id"] for job in jobs} >= set(ids)


def test_a_store_outage_is_503_store_unavailable_and_the_gateways_recover(
    gateways: tuple[Server, Server], worker: WorkerProcess, postgres_url: str
) -> None:
    """The database refuses connections for a while (every gateway's connections cut, its notices too): jobs and
    /readyz get 503 store_unavailable; afterwards both serve again, and a request that waited through it on
    one gateway is answered, whichever recorded its outcome."""
    a, b = gateways
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{b.url}/captionImageBlocking", json={"imgb64s": images_b64(pictures(1))}, timeout=120)
        )
    )
    waiting.start()  # no worker yet: it waits
    wait_until(lambda: len(httpx.get(f"{a.url}/v1/jobs", timeout=10).json()["jobs"]) == 1, timeout_s=30)
    name = urlsplit(postgres_url).path.lstrip("/")
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            for server in (a, b):
                ready = httpx.get(f"{server.url}/readyz", timeout=30)
                assert (ready.status_code, ready.json()["error"]["code"]) == (503, "store_unavailable")
            refused = post(a, {"images": [{"b64": images_b64(pictures(1))[0]}]}, {})
            assert (refused.status_code, refused.json()["error"]["code"]) == (503, "store_unavailable")
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    worker.start()
    waiting.join()
    assert [answer.status_code for answer in answers] == [200]
    job_id = submit_job(a, pictures(2))
    wait_until(lambda: get_job(b, job_id)["status"] == "succeeded", timeout_s=60)
