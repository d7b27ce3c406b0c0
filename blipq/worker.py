"""`blipq worker`: load the model once, consume from RabbitMQ until SIGTERM, then answer what is in hand."""

from __future__ import annotations

import logging
import signal
import threading

from prometheus_client import start_http_server

from blipq.engine_build.checkpoint import resolve_checkpoint
from blipq.inference.amqp_worker import AmqpWorker
from blipq.inference.engine import CaptionEngine, quiet_transformers
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.settings import InferenceSettings
from blipq.serving import show_progress_logs

log = logging.getLogger(__name__)


def run_worker(settings: InferenceSettings) -> None:
    assert settings.broker_url is not None
    show_progress_logs()
    quiet_transformers()
    checkpoint = resolve_checkpoint(settings.model, settings.checkpoints_dir)
    engine = CaptionEngine.configured(checkpoint, settings)
    metrics = InferenceMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=metrics.registry)
    worker = AmqpWorker.of(settings, engine, metrics)
    # The handler only records the signal: setting an Event from a handler can deadlock on the Event's
    # own lock, so the main thread sets it while the worker runs in another thread.
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: signals.append(received))
    log.info("worker ready: %s on %s", checkpoint, engine.device)
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:
            failures.append(exc)

    runner = threading.Thread(target=run, name="blipq-amqp")
    runner.start()
    while runner.is_alive():
        runner.join(0.2)
        if signals and not stop.is_set():
            log.info("signal %d: answering the requests in hand, then exiting", signals[0])
            stop.set()
    if failures:  # a worker that cannot caption must not look like one that stopped as asked
        log.error("the worker stopped: %s", failures[0], exc_info=failures[0])
        raise SystemExit(1)
