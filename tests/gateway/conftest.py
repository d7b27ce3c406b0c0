from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from blipq.contract.images import ImagePolicy
from blipq.embedded import InProcessBroker
from blipq.gateway.app import create_app
from blipq.gateway.broker import Broker, Dispatch, OutcomeHandler
from blipq.gateway.jobs import Job
from blipq.gateway.rabbit import MessageSizes, RabbitBroker
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import Store, open_store
from blipq.inference.amqp_worker import AmqpWorker
from blipq.inference.batcher import BatcherConfig
from blipq.inference.engine import CaptionEngine
from blipq.inference.fetch import FetchPolicy
from blipq.inference.metrics import InferenceMetrics
from tests.rabbitmq import TestBroker
from tests.server import Server, WorkerProcess, free_port, wait_until

#: The transports the app runs on. A test runs in the embedded mode only, unless it is marked `both_modes`
#: (the transport matters to it: publishing, replies, waiting, readiness, what the worker checks) or
#: `rabbitmq_only` (it is about the broker itself).
MODES = ("embedded", "rabbitmq")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("rabbitmq_only"):
        modes = ["rabbitmq"]
    else:
        modes = list(MODES) if metafunc.definition.get_closest_marker("both_modes") else ["embedded"]
    for fixture in ("server", "make_client"):
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, modes, indirect=True)


@contextmanager
def running_server(
    mode: str, request: pytest.FixtureRequest, checkpoint: Path, data: Path, env: dict[str, str]
) -> Iterator[Server]:
    """A real `blipq serve` in `mode`: embedded (uvicorn + SQLite + the model on its threads), or over
    RabbitMQ (the gateway publishing to a real broker, a `blipq worker` consuming). `env` goes to both."""
    if mode == "embedded":
        running = Server(checkpoint, data, env=env).start()
        yield running
        running.stop()
        return
    url = request.getfixturevalue("rabbitmq").fresh_url()
    metrics_port = free_port()
    worker = WorkerProcess(checkpoint, url, data / "worker.log", "--metrics-port", str(metrics_port), env=env).start()
    try:
        running = Server(checkpoint, data, "--broker", url, env=env).start()
        running.worker_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield running
        running.stop()
    finally:
        worker.stop()


#: The loopback file server stands in for the internet: allow it past the SSRF address check.
ALLOW_LOOPBACK = {"BLIPQ_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}


@pytest.fixture(scope="package")
def server(
    request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A real `blipq serve` shared by the API tests (see `running_server`)."""
    data = tmp_path_factory.mktemp(f"serve-{request.param}")
    with running_server(request.param, request, tiny_checkpoint, data, ALLOW_LOOPBACK) as running:
        yield running


class HeldModelBroker(InProcessBroker):
    """The embedded transport with its model held back: the jobs admitted wait, as they would on a broker
    with no consumer, until `run_model()` starts the real batcher on them."""

    def __init__(self, engine: CaptionEngine, config: BatcherConfig, store: Store, **bounds: int) -> None:
        super().__init__(engine, config, store, model="tiny", metrics=InferenceMetrics(), **bounds)
        self.held: list[Dispatch] | None = []
        # Jobs are admitted on the app's event loop (a replay, in the background) and on the admission's
        # thread while the test's thread runs the model: no job may slip between the two.
        self._holding = threading.Lock()

    async def start(self, on_outcome: OutcomeHandler, *, shared_store: str | None = None) -> None:
        self._on_outcome, self._loop = on_outcome, asyncio.get_running_loop()
        self.admission.start()

    def run(self, dispatch: Dispatch) -> None:
        with self._holding:
            if self.held is not None:
                self.held.append(dispatch)
                return
        super().run(dispatch)

    def run_model(self) -> None:
        self.batcher.start()
        with self._holding:
            held, self.held = self.held or [], None
        for dispatch in held:
            super().run(dispatch)

    async def stop(self) -> None:
        if self.held is None:
            await super().stop()
        else:
            self.admission.stop()


AppFactory = Callable[..., TestClient]
T = TypeVar("T")


class RabbitModel:
    """The model side over RabbitMQ, in this process: a real `AmqpWorker` thread on the test's broker."""

    def __init__(
        self, url: str, engine: CaptionEngine, config: BatcherConfig, max_messages: int, max_images: int = 256
    ) -> None:
        self.worker = AmqpWorker(
            url, engine, config, model_name="tiny", max_messages=max_messages, max_images=max_images,
            request_policy=ImagePolicy(max_bytes=100 * 1024 * 1024),
        )  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,))

    def run(self) -> None:
        self._thread.start()
        assert self.worker.connected.wait(30), "the worker did not connect"

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)


@pytest.fixture
def make_client(request: pytest.FixtureRequest, tmp_path: Path, engine: CaptionEngine) -> Iterator[AppFactory]:
    """Build the app in-process on a real SQLite store, in each mode: the embedded transport with the tiny
    model, or RabbitMQ (the test's broker) with an `AmqpWorker` thread running the tiny model.

    `model_running=False` holds the model back until `client.app.state.run_model()`;
    `client.app.state.stop_model()` stops it. `worker_max_images`: the worker's limit per request message;
    `held_bounds`: the embedded mode's bounds on the jobs held in memory (max_held_images, max_held_bytes)."""
    stack = ExitStack()
    numbers = itertools.count()
    config = BatcherConfig(max_batch=4, fetch=FetchPolicy(allow_networks=("127.0.0.0/8",)))
    broker_for_tests: TestBroker | None = request.getfixturevalue("rabbitmq") if request.param == "rabbitmq" else None

    def build(
        *,
        model_running: bool = True,
        worker_max_images: int = 256,
        held_bounds: dict[str, int] | None = None,
        **overrides: Any,
    ) -> TestClient:
        # Each app its own virtual host: a second app in one test must not share the first one's worker.
        amqp_url = broker_for_tests.fresh_url() if broker_for_tests is not None else None
        settings = GatewaySettings(store=f"sqlite:///{tmp_path}/store-{next(numbers)}.db", **overrides)
        store = open_store(settings.store)  # the app closes it
        broker: Broker
        if amqp_url is None:
            held = HeldModelBroker(engine, config, store, **(held_bounds or {}))
            broker, run, stop = held, held.run_model, held.batcher.stop
        else:
            limit = settings.max_queued_messages
            rabbit = RabbitBroker(
                amqp_url,
                gateway_id=f"test-{uuid.uuid4().hex[:8]}",
                max_messages=limit,
                sizes=MessageSizes.of(settings),
            )
            model = RabbitModel(amqp_url, engine, config, limit, worker_max_images)
            stack.callback(model.stop)
            broker, run, stop = rabbit, model.run, model.stop
        client = stack.enter_context(TestClient(create_app(settings, store, broker)))
        client.app.state.run_model, client.app.state.stop_model = run, stop  # type: ignore[attr-defined]
        if amqp_url is not None:
            wait_until(lambda: rabbit.connected, timeout_s=30)
        if model_running:
            run()
        return client

    with stack:
        yield build


def on_app(client: TestClient, function: Callable[..., Coroutine[Any, Any, T]], *args: object) -> T:
    """`function(*args)` awaited on the app's event loop (the store's and the service's coroutines run there)."""
    assert client.portal is not None, "the client is running"
    return client.portal.call(function, *args)


def app_store(client: TestClient) -> Store:
    store: Store = client.app.state.service.store  # type: ignore[attr-defined]
    return store


def pending_images(client: TestClient) -> int:
    return on_app(client, app_store(client).pending_images)


def stored_job(client: TestClient, job_id: str) -> Job:
    """The job as the app's store has it."""
    return on_app(client, app_store(client).get, job_id)


def finished_job(client: TestClient, job_id: str, timeout_s: float = 60) -> Job:
    wait_until(lambda: stored_job(client, job_id).status.finished, timeout_s)
    return stored_job(client, job_id)
