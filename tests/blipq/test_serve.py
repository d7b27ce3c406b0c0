"""`blipq serve` in the embedded mode under process failures: kill -9, a poison job, SIGTERM, restart."""

from __future__ import annotations

import base64
import signal
import threading
from pathlib import Path
from typing import Any

import httpx

from blipq.contract.amqp import MAX_CUT_OFF_RUNS
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import JobStatus
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.helpers import pictures
from tests.server import Server, get_job, stored_statuses, submit_inputs, submit_job, wait_until


def jobs(server: Server, ids: list[str]) -> list[dict[str, Any]]:
    return [get_job(server, job_id) for job_id in ids]


def images_in(state: str, server: Server, ids: list[str]) -> int:
    return sum(image["status"] == state for job in jobs(server, ids) for image in job["images"])


def assert_all_captioned_once(
    server: Server, ids: list[str], batches: list[list[bytes]], engine: CaptionEngine
) -> None:
    for job, images in zip(jobs(server, ids), batches, strict=True):
        assert job["status"] == "succeeded", job
        expected = engine.caption([decode_image(image) for image in images], CaptionOptions())
        assert [image["caption"] for image in job["images"]] == expected
        assert all(image["status"] == "done" for image in job["images"])


def restart_and_finish(
    model: Path, data_dir: Path, ids: list[str], batches: list[list[bytes]], engine: CaptionEngine
) -> None:
    """A new server on the same store finishes every job, each image once with the exact caption."""
    server = Server(model, data_dir).start()
    try:
        wait_until(lambda: all(job["status"] == "succeeded" for job in jobs(server, ids)))
        assert_all_captioned_once(server, ids, batches, engine)
    finally:
        server.stop()


def test_kill_9_then_restart_finishes_every_accepted_job(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    """kill -9 with a job finished and others just accepted; the restart on the same store runs the rest."""
    first = Server(tiny_checkpoint, tmp_path, "--max-batch", "4").start()
    images = pictures(60)
    batches = [images[:10], images[10:20], images[20:]]  # the last: seconds of model time
    ids = [submit_job(first, batches[0])]
    wait_until(lambda: jobs(first, ids)[0]["status"] == "succeeded")
    ids += [submit_job(first, images) for images in batches[1:]]
    first.kill()  # at once: accepted (stored) moments ago, the last job cannot be finished yet
    assert stored_statuses(tmp_path, ids)[-1] is not JobStatus.SUCCEEDED, "the kill came too late to test much"
    restart_and_finish(tiny_checkpoint, tmp_path, ids, batches, engine)


def test_a_job_that_kills_the_process_each_time_is_failed_worker_lost_and_costs_no_other_job(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine, crawling_server: str
) -> None:
    """A poison job must not crash-loop the server: after it was cut off 4 times, the next start fails it
    instead of running it again (as over RabbitMQ, where the delivery limit does it).
    The poison here is a URL that never finishes downloading, so it is always running when the process
    dies; an innocent job running beside it the first time is run again alone afterwards, and succeeds."""
    options = ("--max-batch", "1")
    env = {"BLIPQ_FETCH_ALLOW_NETWORKS": "127.0.0.0/8", "BLIPQ_FETCH_TIMEOUT_S": "600"}
    server = Server(tiny_checkpoint, tmp_path, *options, env=env).start()
    poison = submit_inputs(server, [{"url": f"{crawling_server}/poison.jpg"}])
    images = pictures(40)  # seconds of work with one image per model call
    innocent = submit_job(server, images)
    wait_until(lambda: {job["status"] for job in jobs(server, [poison, innocent])} == {"running"})
    for restart in range(1, MAX_CUT_OFF_RUNS + 1):
        server.kill()
        server = Server(tiny_checkpoint, tmp_path, *options, env=env).start()
        if restart < MAX_CUT_OFF_RUNS:  # the poison is run again, alone: the innocent job waits for it
            wait_until(lambda: jobs(server, [poison])[0]["status"] == "running")  # noqa: B023
            assert jobs(server, [innocent])[0]["status"] == "queued"
    try:
        (job,) = jobs(server, [poison])
        assert job["status"] == "failed"
        assert {image["error"]["code"] for image in job["images"]} == {"worker_lost"}
        assert f"stopped {MAX_CUT_OFF_RUNS} times" in job["images"][0]["error"]["message"]
        wait_until(lambda: jobs(server, [innocent])[0]["status"] == "succeeded")
        assert_all_captioned_once(server, [innocent], [images], engine)
    finally:
        server.stop()


def test_sigterm_leaves_jobs_not_started_in_the_store_for_the_next_start(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    first = Server(tiny_checkpoint, tmp_path, "--max-batch", "1").start()
    images = pictures(50)
    batches = [images[:10], images[10:40], images[40:]]  # at one image per model call, seconds between starts
    ids = [submit_job(first, images) for images in batches]
    wait_until(lambda: jobs(first, ids)[0]["status"] != "queued")
    first.stop()
    assert first.process is not None
    assert first.process.returncode in (0, -signal.SIGTERM)
    statuses = stored_statuses(tmp_path, ids)
    assert statuses[0] is JobStatus.SUCCEEDED  # started before SIGTERM: finished before the exit
    assert statuses[-1] is JobStatus.QUEUED  # never started: left for the next start
    restart_and_finish(tiny_checkpoint, tmp_path, ids, batches, engine)


def test_sigterm_lets_in_flight_requests_finish(tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine) -> None:
    """SIGTERM: the server stops accepting, the blocking request already in flight still gets its captions
    (the model keeps running until the request is answered), then everything exits."""
    server = Server(tiny_checkpoint, tmp_path, "--max-batch", "1").start()
    images = pictures(24)  # a few seconds of work on the tiny model, one image per batch
    body = {"imgb64s": [base64.b64encode(image).decode() for image in images]}
    answer: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answer.append(httpx.post(f"{server.url}/captionImageBlocking", json=body, timeout=120))
    )
    request.start()
    wait_until(lambda: any(job["status"] == "running" for job in _list_jobs(server)), timeout_s=30)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: _refuses_connections(server), timeout_s=10)
    assert not answer  # no longer accepting, and the request is still in flight
    request.join(120)
    assert answer[0].status_code == 200
    assert answer[0].json()["result"] == engine.caption([decode_image(image) for image in images], CaptionOptions())
    assert server.process.wait(60) in (0, -signal.SIGTERM)


def _list_jobs(server: Server) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = httpx.get(f"{server.url}/v1/jobs", timeout=10).json()["jobs"]
    return jobs


def _refuses_connections(server: Server) -> bool:
    """Refused, or reset unanswered (uvloop resets a connection the closing listener had already queued)."""
    try:
        httpx.get(f"{server.url}/healthz", timeout=1)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return False
