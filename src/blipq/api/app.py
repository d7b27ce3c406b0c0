"""`create_app(settings, queue)`: the FastAPI application."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from blipq import __version__
from blipq.api.auth import ApiKeys, RateLimiter
from blipq.api.body_limit import BodySizeLimit
from blipq.api.errors import install_error_handlers
from blipq.api.routes import health, seed, v1
from blipq.api.service import Metrics, Service
from blipq.config import Settings
from blipq.errors import BlipqError
from blipq.queue import JobQueue

log = logging.getLogger(__name__)

#: Blocking requests each hold a thread while they wait (on a condition, not spinning).
MAX_CONCURRENT_BLOCKING_REQUESTS = 1024


def create_app(settings: Settings, queue: JobQueue, *, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """`on_shutdown` runs (in a thread) after the server stopped accepting, e.g. to drain worker processes."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = MAX_CONCURRENT_BLOCKING_REQUESTS
        stop = threading.Event()
        purger = threading.Thread(target=_purge_forever, args=(queue, settings, stop), daemon=True)
        purger.start()
        yield
        stop.set()
        if on_shutdown is not None:
            await anyio.to_thread.run_sync(on_shutdown)

    # The docs pages load Swagger UI and ReDoc from files in the fastapi-offline package, not from a
    # CDN, so /docs works on a machine without internet access.
    app = FastAPIOffline(
        title="blipq",
        version=__version__,
        summary="Image captioning with Salesforce BLIP: a durable queue, batching workers, blocking and async APIs.",
        lifespan=lifespan,
        # A JSON body sent without a Content-Type is read as JSON (other types get 415).
        strict_content_type=False,
        # Swagger UI would otherwise ask validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.service = Service(
        queue=queue,
        settings=settings,
        metrics=Metrics(queue),
        keys=ApiKeys.from_settings(settings),
        rate_limiter=RateLimiter(settings.rate_limit) if settings.rate_limit else None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(seed.router)
    app.include_router(v1.router)
    app.include_router(health.router)
    return app


def _purge_forever(queue: JobQueue, settings: Settings, stop: threading.Event) -> None:
    """Delete finished jobs past the retention period, checking a few times per period (at most every minute)."""
    interval = min(60.0, settings.retention_s / 4)
    while not stop.wait(interval):
        try:
            purged = queue.purge(settings.retention_s)
        except BlipqError as exc:
            log.warning("purge failed: %s", exc.message)
            continue
        if purged:
            log.info("purged %d jobs older than the retention period", purged)
