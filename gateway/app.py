"""`create_app(settings, store, broker)`: the FastAPI application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry

from blipq.contract.errors import BlipqError
from blipq.gateway.auth import ApiKeys, RateLimiter
from blipq.gateway.body_limit import BodySizeLimit
from blipq.gateway.broker import Broker
from blipq.gateway.errors import install_error_handlers
from blipq.gateway.metrics import GatewayMetrics
from blipq.gateway.routes import health, page, seed, v1
from blipq.gateway.service import Service
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import Store

log = logging.getLogger(__name__)

#: Threads for the SQLite store's reads and the routes that run on threads (decoding uploads); blocking requests
#: wait on the event loop and hold no thread.
MAX_WORKER_THREADS = 1024


def create_app(
    settings: GatewaySettings,
    store: Store,
    broker: Broker,
    *,
    more_metrics: Sequence[CollectorRegistry] = (),
) -> FastAPI:
    """The store and the broker are started with the app; the broker is stopped after the server stopped
    accepting and the requests in flight were answered, then the store is closed. `more_metrics` are served by
    /metrics too (the embedded inference side's)."""
    service = Service(
        store=store,
        broker=broker,
        settings=settings,
        metrics=GatewayMetrics(),
        keys=ApiKeys.from_settings(settings),
        rate_limiter=RateLimiter(settings.rate_limit) if settings.rate_limit else None,
    )

    running = 0  # lifespans entered: a test client may nest one inside the server's; the outermost owns the broker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal running
        running += 1
        if running > 1:
            yield
            running -= 1
            return
        anyio.to_thread.current_default_thread_limiter().total_tokens = MAX_WORKER_THREADS
        await store.start(service.finished_elsewhere)
        try:
            await broker.start(service.record, shared_store=store.shared_id)
        except BaseException:
            await store.close()
            raise
        # In the background: a replay waits for the jobs it runs alone, and the broker may not be connected yet.
        recovering = asyncio.create_task(
            service.replay_unfinished() if broker.replays_unfinished else service.publish_unconfirmed()
        )
        recovering.add_done_callback(_log_failure)
        purger = asyncio.create_task(_purge_forever(store, settings))
        yield
        purger.cancel()
        recovering.cancel()
        await broker.stop()
        # The outcomes of the jobs finished while stopping are under way: commit them now, since uvicorn
        # re-raises the SIGTERM it caught once the app is done, and that ends the process.
        await store.close()
        running -= 1

    # The docs pages load Swagger UI and ReDoc from files in the fastapi-offline package, not from a
    # CDN, so /docs works on a machine without internet access.
    app = FastAPIOffline(
        title="blipq",
        version=version("blipq"),
        summary="Image captioning with Salesforce BLIP: blocking and async APIs over a batching inference queue.",
        lifespan=lifespan,
        # A JSON body sent without a Content-Type is read as JSON (other types get 415).
        strict_content_type=False,
        # Swagger UI would otherwise ask validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.service = service
    app.state.metrics_registries = [service.metrics.registry, *more_metrics]
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(seed.router)
    app.include_router(v1.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.mount("/page", page.assets, name="page")
    return app


def _log_failure(recovering: asyncio.Task[None]) -> None:
    """A failed recovery must be seen: its jobs stay in the store, and the next start tries them again."""
    if not recovering.cancelled() and (error := recovering.exception()) is not None:
        log.error("the unfinished jobs were not all dispatched again: %s", error, exc_info=error)


async def _purge_forever(store: Store, settings: GatewaySettings) -> None:
    """Delete finished jobs past the retention period, checking a few times per period (at most every minute)."""
    interval = min(60.0, settings.retention_s / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            purged = await store.purge(settings.retention_s)
        except BlipqError as exc:
            log.warning("purge failed: %s", exc.message)
            continue
        if purged:
            log.info("purged %d jobs older than the retention period", purged)
