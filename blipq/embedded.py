"""The embedded mode: the gateway's jobs go straight to a batcher on threads of this process.

Nothing survives the process here, so the gateway dispatches its store's unfinished jobs again
when it starts (`replays_unfinished`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

import anyio.to_thread

from blipq.contract.errors import ModelUnavailable
from blipq.contract.messages import ImageResult
from blipq.engine_build.checkpoint import resolve_checkpoint
from blipq.gateway.broker import Dispatch, JobFinished, JobStarted, OutcomeHandler
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import open_store
from blipq.inference.batcher import Batcher, BatcherConfig, WorkItem
from blipq.inference.engine import CaptionEngine, quiet_transformers
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.settings import InferenceSettings
from blipq.serving import serve_app, show_progress_logs

log = logging.getLogger(__name__)

STORE_RETRY_S = 1.0  # the pause before an outcome the store refused is offered again


class InProcessBroker:
    replays_unfinished = True

    def __init__(self, engine: CaptionEngine, config: BatcherConfig, *, model: str, metrics: InferenceMetrics) -> None:
        self.model = model
        self.device = str(engine.device)
        self.batcher = Batcher(engine, config, on_start=self.started, on_done=self.done, metrics=metrics)
        self._on_outcome: OutcomeHandler | None = None
        self._stopping = False

    async def start(self, on_outcome: OutcomeHandler) -> None:
        self._on_outcome = on_outcome
        self.batcher.start()

    async def publish(self, dispatch: Dispatch) -> None:
        self.submit(dispatch)

    def submit(self, dispatch: Dispatch) -> None:
        self.batcher.submit(WorkItem(dispatch.job_id, dispatch.images, dispatch.options))

    async def readiness(self) -> dict[str, object]:
        if not self.batcher.alive():
            raise ModelUnavailable("the model's thread is not running; see the server log")
        return {"mode": "embedded", "model": self.model, "device": self.device}

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.batcher.stop)
        self._stopping = True

    def started(self, item: WorkItem) -> None:
        """On the batcher's feeder thread, before the model sees the job: waits until the attempt is stored, so
        a job that takes the process down with it is counted even then (and failed after max_attempts)."""
        self._deliver(JobStarted(item.key)).result()

    def done(self, item: WorkItem, results: list[ImageResult]) -> None:
        """On the model's thread: hands the outcome over and returns (the store commits it on its own thread)."""
        self._record(JobFinished(item.key, results))

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
        return self._on_outcome(outcome)


def run_embedded(gateway: GatewaySettings, inference: InferenceSettings) -> None:
    """Open the store, load the model, serve until SIGTERM; then answer the requests in flight, finish the
    jobs started and leave the others in the store for the next start."""
    show_progress_logs()
    store = open_store(gateway.store)
    try:
        quiet_transformers()
        checkpoint = resolve_checkpoint(inference.model, inference.checkpoints_dir)
        engine = CaptionEngine.configured(checkpoint, inference)
    except BaseException:
        store.close()
        raise
    log.info("model %s loaded on %s", checkpoint, engine.device)
    metrics = InferenceMetrics()
    broker = InProcessBroker(engine, BatcherConfig.of(inference), model=inference.model, metrics=metrics)
    serve_app(gateway, store, broker, more_metrics=[metrics.registry])
