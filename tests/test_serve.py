"""`blipq serve` under process failures: kill -9 a worker mid-batch, kill -9 everything, restart."""

from __future__ import annotations

import base64
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx

from blipq.images import decode_image
from blipq.jobs import CaptionOptions
from blipq.model.engine import CaptionEngine
from tests.helpers import pictures
from tests.server import Server, get_job, submit_job, wait_until


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


def test_kill_9_the_worker_mid_batch(tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine) -> None:
    server = Server(tiny_checkpoint, tmp_path, "--max-batch", "4", lease_s=2.0).start()
    try:
        batches = [pictures(40)[i : i + 10] for i in range(0, 40, 10)]
        ids = [submit_job(server, images) for images in batches]
        wait_until(lambda: images_in("done", server, ids) >= 2)
        (victim,) = server.worker_pids()
        held = images_in("running", server, ids)  # the worker holds a batch right now
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: server.worker_pids() not in ([], [victim]))
        wait_until(lambda: all(job["status"] == "succeeded" for job in jobs(server, ids)))
        assert held > 0
        assert_all_captioned_once(server, ids, batches, engine)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        server.stop()


def test_kill_9_everything_then_restart(tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine) -> None:
    first = Server(tiny_checkpoint, tmp_path, "--max-batch", "4", lease_s=2.0).start()
    batches = [pictures(30)[i : i + 10] for i in range(0, 30, 10)]
    ids = [submit_job(first, images) for images in batches]
    wait_until(lambda: images_in("done", first, ids) >= 1)
    first.kill_everything()

    second = Server(tiny_checkpoint, tmp_path, lease_s=2.0).start()
    try:
        wait_until(lambda: all(job["status"] == "succeeded" for job in jobs(second, ids)))
        assert_all_captioned_once(second, ids, batches, engine)
    finally:
        second.stop()


def test_api_only_server_keeps_jobs_for_a_later_worker(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    api_only = Server(tiny_checkpoint, tmp_path, workers=0).start(ready=False)
    images = pictures(3)
    job_id = submit_job(api_only, images)
    assert httpx.get(f"{api_only.url}/readyz").status_code == 503
    api_only.kill_everything()
    with_worker = Server(tiny_checkpoint, tmp_path).start()
    try:
        wait_until(lambda: jobs(with_worker, [job_id])[0]["status"] == "succeeded")
        assert_all_captioned_once(with_worker, [job_id], [images], engine)
    finally:
        with_worker.stop()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, waiting for its (dead) parent to be reaped


def test_workers_never_outlive_serve(tiny_checkpoint: Path, tmp_path: Path) -> None:
    graceful = Server(tiny_checkpoint, tmp_path / "a").start()
    (worker,) = graceful.worker_pids()
    graceful.stop()  # SIGTERM: uvicorn shuts down, then the workers drain and exit
    assert graceful.process is not None
    assert graceful.process.returncode in (0, -signal.SIGTERM)
    wait_until(lambda: _gone(worker), timeout_s=30)

    brutal = Server(tiny_checkpoint, tmp_path / "b").start()
    (worker,) = brutal.worker_pids()
    assert brutal.process is not None
    os.kill(brutal.process.pid, signal.SIGKILL)  # only serve itself
    brutal.process.wait()
    wait_until(lambda: _gone(worker), timeout_s=30)


def test_sigterm_lets_in_flight_requests_finish(tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine) -> None:
    """SIGTERM: the server stops accepting, the blocking request already in flight still gets its captions
    (its worker keeps running until the request is answered), then everything exits."""
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
    try:
        httpx.get(f"{server.url}/healthz", timeout=1)
    except httpx.ConnectError:
        return True
    return False
