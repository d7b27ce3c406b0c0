"""Run the gateway under uvicorn; with `--broker`, jobs go to RabbitMQ and this process needs no model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import uvicorn
from prometheus_client import CollectorRegistry

from blipq.gateway.app import create_app
from blipq.gateway.broker import Broker
from blipq.gateway.rabbit import MessageSizes, RabbitBroker
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import Store, open_store

log = logging.getLogger(__name__)


def show_progress_logs() -> None:
    logging.getLogger("blipq").setLevel(logging.INFO)


def serve_app(
    settings: GatewaySettings, store: Store, broker: Broker, more_metrics: Sequence[CollectorRegistry] = ()
) -> None:
    """Serve until SIGTERM; then answer the requests in flight, stop the broker and close the store."""
    app = create_app(settings, store, broker, more_metrics=more_metrics)
    log.info("serving on %s:%d", settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )


def run_gateway(settings: GatewaySettings) -> None:
    assert settings.broker_url is not None
    show_progress_logs()
    broker = RabbitBroker(
        settings.broker_url,
        gateway_id=settings.gateway_id,
        max_messages=settings.max_queued_messages,
        sizes=MessageSizes.of(settings),
    )
    serve_app(settings, open_store(settings.store), broker)
