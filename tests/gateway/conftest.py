from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from blipq.embedded import InProcessBroker
from gateway.app import create_app
from gateway.broker import Dispatch, OutcomeHandler
from gateway.jobs import Job
from gateway.settings import GatewaySettings
from gateway.store import open_store
from inference.batcher import BatcherConfig
from inference.engine import CaptionEngine
from inference.fetch import FetchPolicy
from inference.metrics import InferenceMetrics
from tests.rabbitmq import TestBroker
from tests.server import Server, WorkerProcess, free_port, wait_until


@pytest.fixture(scope="package", params=["embedded", "rabbitmq"])
def server(
    request: pytest.FixtureRequest,
    tiny_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq: TestBroker,
) -> Iterator[Server]:
    """A real `blipq serve` shared by the API tests, in each mode: embedded (uvicorn + SQLite + the model on
    its threads), and over RabbitMQ (the gateway publishing to a real broker, a `blipq worker` consuming)."""
    # The loopback file server stands in for the internet: allow it past the SSRF address check.
    allow_loopback = {"BLIPQ_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
    data = tmp_path_factory.mktemp(f"serve-{request.param}")
    if request.param == "embedded":
        running = Server(tiny_checkpoint, data, env=allow_loopback).start()
        yield running
        running.stop()
        return
    url = rabbitmq.fresh_url()
    metrics_port = free_port()
    worker = WorkerProcess(
        tiny_checkpoint, url, data / "worker.log", "--metrics-port", str(metrics_port), env=allow_loopback
    ).start()
    try:
        running = Server(tiny_checkpoint, data, "--broker", url, env=allow_loopback).start()
        running.worker_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield running
        running.stop()
    finally:
        worker.stop()


class HeldModelBroker(InProcessBroker):
    """The embedded transport with its model held back: published jobs wait, as they would on a broker
    with no consumer, until `run_model()` starts the real batcher on them."""

    def __init__(self, engine: CaptionEngine, config: BatcherConfig) -> None:
        super().__init__(engine, config, model="tiny", metrics=InferenceMetrics())
        self.held: list[Dispatch] | None = []

    async def start(self, on_outcome: OutcomeHandler) -> None:
        self._on_outcome = on_outcome

    async def publish(self, dispatch: Dispatch) -> None:
        if self.held is None:
            self.submit(dispatch)
        else:
            self.held.append(dispatch)

    def run_model(self) -> None:
        held, self.held = self.held or [], None
        self.batcher.start()
        for dispatch in held:
            self.submit(dispatch)

    async def stop(self) -> None:
        if self.held is None:
            await super().stop()


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path, engine: CaptionEngine) -> Iterator[AppFactory]:
    """Build the app in-process on a real SQLite store with the embedded transport and the tiny model;
    `model_running=False` holds the model back until `client.app.state.service.broker.run_model()`."""
    stack = ExitStack()
    numbers = itertools.count()

    def build(*, model_running: bool = True, **overrides: Any) -> TestClient:
        settings = GatewaySettings(store=f"sqlite:///{tmp_path}/store-{next(numbers)}.db", **overrides)
        store = open_store(settings.store)
        stack.callback(store.close)
        config = BatcherConfig(max_batch=4, fetch=FetchPolicy(allow_networks=("127.0.0.0/8",)))
        if model_running:
            broker: InProcessBroker = InProcessBroker(engine, config, model="tiny", metrics=InferenceMetrics())
        else:
            broker = HeldModelBroker(engine, config)
        return stack.enter_context(TestClient(create_app(settings, store, broker)))

    with stack:
        yield build


def finished_job(client: TestClient, job_id: str, timeout_s: float = 60) -> Job:
    store = client.app.state.service.store  # type: ignore[attr-defined]
    wait_until(lambda: store.get(job_id).status.finished, timeout_s)
    job: Job = store.get(job_id)
    return job
