"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from blipq.contract.errors import BlipqError
from blipq.gateway.deps import ServiceDep
from blipq.gateway.errors import response_for
from blipq.gateway.schemas import error_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses=error_responses(503))
async def readyz(service: ServiceDep) -> dict[str, object] | Response:
    """The store answers and the broker can run jobs now: embedded, the model is loaded and its thread alive;
    with RabbitMQ, the gateway is connected and at least one worker consumes the request queue."""
    try:
        depth = await service.store.pending_images()
        details = await service.broker.readiness()
    except BlipqError as exc:
        return response_for(exc)
    return {"status": "ready", "queue_depth": depth, **details}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, service: ServiceDep) -> Response:
    try:
        service.metrics.queue_depth.set(await service.store.pending_images())
    except BlipqError:
        service.metrics.queue_depth.set(math.nan)
    registries: list[CollectorRegistry] = request.app.state.metrics_registries
    return Response(b"".join(generate_latest(registry) for registry in registries), media_type=CONTENT_TYPE_LATEST)
