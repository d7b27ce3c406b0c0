"""The embedded mode: the gateway's jobs go straight to a batcher on threads of this process.

Nothing survives the process here, so the gateway dispatches its store's unfinished jobs again
when it starts (`replays_unfinished`). Only a bounded part of the queue is held in memory with its
images; the rest waits in the store (`blipq.admission`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import TypeVar
from urllib.parse import urlsplit

import anyio.to_thread

from blipq.admission import Admission
from blipq.contract.errors import ModelUnavailable, StoreUnavailable
from blipq.contract.messages import ImageResult
from blipq.engine_build.checkpoint import resolve_checkpoint
from blipq.gateway.broker import Dispatch, JobFinished, JobStarted, OutcomeHandler
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import Store, StoredRequest, open_store
from blipq.inference.batcher import Batcher, BatcherConfig, WorkItem
from blipq.inference.engine import CaptionEngine, quiet_transformers
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.settings import InferenceSettings
from blipq.serving import serve_app, show_progress_logs

log = logging.getLogger(__name__)

T = TypeVar("T")

STORE_RETRY_S = 1.0  # the pause before an outcome the store refused is offered again


#: The images (and bytes) of the jobs the model holds at once; the others wait in the store (`Admission`).
HELD_IMAGES_PER_PREFETCH = 4
MAX_HELD_BYTES = 256 * 1024 * 1024


class InProcessBroker:
    replays_unfinished = True

    def __init__(
        self,
        engine: CaptionEngine,
        config: BatcherConfig,
        store: Store,
        *,
        model: str,
        metrics: InferenceMetrics,
        max_held_images: int | None = None,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        """`store`: where a job deferred by `admission` is read back from. `max_held_images` (default four times
        the batcher's prefetch) and `max_held_bytes`: the bound on the jobs held in memory."""
        self.model = model
        self.device = str(engine.device)
        self.batcher = Batcher(engine, config, on_start=self.started, on_done=self.done, metrics=metrics)
        self.admission = Admission(
            self.run,
            lambda job_id: as_dispatch(self._on_loop(store.request(job_id)).result()),
            max_images=max_held_images or HELD_IMAGES_PER_PREFETCH * config.prefetch,
            max_bytes=max_held_bytes,
        )
        self._on_outcome: OutcomeHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def start(self, on_outcome: OutcomeHandler, *, shared_store: str | None = None) -> None:
        self._on_outcome, self._loop = on_outcome, asyncio.get_running_loop()
        self.batcher.start()
        self.admission.start()

    async def publish(self, dispatch: Dispatch) -> None:
        self.admission.offer(dispatch)

    def run(self, dispatch: Dispatch) -> None:
        """A job admitted: to the model."""
        self.batcher.submit(WorkItem(dispatch.job_id, dispatch.images, dispatch.options))

    async def readiness(self) -> dict[str, object]:
        if not self.batcher.alive():
            raise ModelUnavailable("the model's thread is not running; see the server log")
        return {"mode": "embedded", "model": self.model, "device": self.device}

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.admission.stop)
        await anyio.to_thread.run_sync(self.batcher.stop)
        self._stopping = True

    def started(self, item: WorkItem) -> None:
        """On the batcher's feeder thread, before the model sees the job: waits until the attempt is stored, so
        a job that takes the process down with it is counted even then (and failed after max_attempts)."""
        self._deliver(JobStarted(item.key)).result()

    def done(self, item: WorkItem, results: list[ImageResult]) -> None:
        """On the model's thread: hands the outcome over and returns (the store commits it on its own thread)."""
        self._record(JobFinished(item.key, results))
        self.admission.finished(item.key)

    def _record(self, outcome: JobFinished) -> None:
        """An outcome the store could not record (disk full, database locked) is offered again after a pause,
        as RabbitMQ would deliver its reply again, until the store takes it or the process stops (the job is
        then run again at the next start)."""

        def check(stored: Future[None]) -> None:
            if stored.exception() is not None and not self._stopping:
                retry = threading.Timer(STORE_RETRY_S, self._record, args=(outcome,))
                retry.daemon = True
                retry.start()

        self._deliver(outcome).add_done_callback(check)

    def _deliver(self, outcome: JobStarted | JobFinished) -> Future[None]:
        assert self._on_outcome is not None, "outcomes arrive only after start"
        return self._on_loop(self._on_outcome(outcome))

    def _on_loop(self, work: Coroutine[object, object, T]) -> Future[T]:
        """Store work from the model's and the admission's threads runs on the app's event loop, in the order
        handed over (an attempt is stored before the job's outcome)."""
        assert self._loop is not None, "the store is used only after start"
        return asyncio.run_coroutine_threadsafe(work, self._loop)


def as_dispatch(request: StoredRequest | None) -> Dispatch | None:
    """A stored job, to dispatch again; None when there is nothing to run."""
    if request is None or request.images is None:
        return None
    return Dispatch(request.job_id, request.images, request.options, request.indices)


def run_embedded(gateway: GatewaySettings, inference: InferenceSettings) -> None:
    """Open the store, load the model, serve until SIGTERM; then answer the requests in flight, finish the
    jobs started and leave the others in the store for the next start."""
    show_progress_logs()
    if urlsplit(gateway.store).scheme != "sqlite":
        # It would run every gateway's unfinished jobs again at each start, as if they were its own.
        raise StoreUnavailable("a shared store (PostgreSQL) is for gateways over RabbitMQ: add --broker")
    store = open_store(gateway.store)
    try:
        quiet_transformers()
        checkpoint = resolve_checkpoint(inference.model, inference.checkpoints_dir)
        engine = CaptionEngine.configured(checkpoint, inference)
    except BaseException:
        asyncio.run(store.close())
        raise
    log.info("model %s loaded on %s", checkpoint, engine.device)
    metrics = InferenceMetrics()
    broker = InProcessBroker(engine, BatcherConfig.of(inference), store, model=inference.model, metrics=metrics)
    serve_app(gateway, store, broker, more_metrics=[metrics.registry])
