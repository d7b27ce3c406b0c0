"""Run a real `blipq serve` subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from blipq.gateway.jobs import JobStatus
from blipq.gateway.store import open_store


def terminate(process: subprocess.Popen[bytes] | None, grace_s: float = 60) -> None:
    """SIGTERM a process started in its own session and wait; SIGKILL its whole session after `grace_s`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(
        self,
        model: Path,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        store: str | None = None,
    ) -> None:
        """`cwd`: where the server runs (`python -m blipq` imports blipq from there first); `store`: its store's
        URL (default: a SQLite file in `data_dir`)."""
        self.port = free_port()
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"serve-{self.port}.log"
        self.command = [
            sys.executable, "-m", "blipq", "serve", "--port", str(self.port), "--model", str(model),
            "--store", store or store_url(data_dir), "--device", "cpu", *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.mode = "rabbitmq" if "--broker" in extra else "embedded"
        self.worker_metrics_url: str | None = None  # the `blipq worker`'s, in the RabbitMQ mode

    def start(self, *, ready: bool = True, timeout_s: float = 120) -> Server:
        log = self.log_path.open("ab")
        # Its own session, so the whole tree can be killed at once.
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=log, env=self.env, cwd=self.cwd, start_new_session=True
        )
        path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"blipq serve exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"blipq serve not ready after {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server, like a machine losing power."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        terminate(self.process)


class WorkerProcess:
    """A real `blipq worker` subprocess consuming from RabbitMQ."""

    def __init__(self, model: Path, broker_url: str, log_path: Path, *extra: str, env: dict[str, str] | None = None):
        self.command = [
            sys.executable, "-m", "blipq", "worker", "--broker", broker_url, "--model", str(model), "--device", "cpu",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=log, env=self.env, start_new_session=True)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        terminate(self.process)


def wait_until(condition: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def submit_job(server: Server, images: list[bytes]) -> str:
    """POST /v1/jobs with base64 images; returns the job id."""
    return submit_inputs(server, [{"b64": base64.b64encode(image).decode()} for image in images])


def submit_inputs(server: Server, inputs: list[dict[str, str]]) -> str:
    """POST /v1/jobs with these image inputs ({"b64": ...} or {"url": ...}); returns the job id."""
    response = httpx.post(f"{server.url}/v1/jobs", json={"images": inputs}, timeout=30)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def get_job(server: Server, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def store_url(data_dir: Path) -> str:
    """The store of a `Server` whose data folder is `data_dir`."""
    return f"sqlite:///{data_dir}/store.db"


def stored_statuses(data_dir: Path, ids: list[str]) -> list[JobStatus]:
    """The jobs' statuses as the store a `Server` kept in `data_dir` holds them (read from the file)."""

    async def read() -> list[JobStatus]:
        store = open_store(store_url(data_dir))
        try:
            return [(await store.get(job_id)).status for job_id in ids]
        finally:
            await store.close()

    return asyncio.run(read())
