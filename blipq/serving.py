"""`blipq serve` in the embedded mode: the gateway, the store and the model in one process."""

from __future__ import annotations

import logging

import uvicorn

from blipq.embedded import InProcessBroker
from engine_build.checkpoint import resolve_checkpoint
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.store import open_store
from inference.batcher import BatcherConfig
from inference.engine import CaptionEngine, quiet_transformers
from inference.metrics import InferenceMetrics
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def run_embedded(gateway: GatewaySettings, inference: InferenceSettings) -> None:
    """Open the store, load the model, serve until SIGTERM; then answer the requests in flight, finish the
    jobs started and leave the others in the store for the next start."""
    for name in ("blipq", "gateway", "inference"):
        logging.getLogger(name).setLevel(logging.INFO)
    store = open_store(gateway.store)
    try:
        quiet_transformers()
        checkpoint = resolve_checkpoint(inference.model, inference.checkpoints_dir)
        engine = CaptionEngine.load(checkpoint, device=inference.device, dtype=inference.dtype)
        metrics = InferenceMetrics()
        broker = InProcessBroker(engine, BatcherConfig.of(inference), model=inference.model, metrics=metrics)
        app = create_app(gateway, store, broker, more_metrics=[metrics.registry])
        log.info("model %s loaded on %s; serving on %s:%d", checkpoint, engine.device, gateway.host, gateway.port)
        uvicorn.run(
            app,
            host=gateway.host,
            port=gateway.port,
            log_level="info",
            timeout_graceful_shutdown=gateway.shutdown_timeout_s,
        )
    finally:
        store.close()
