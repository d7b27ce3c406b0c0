"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from blipq.api.deps import ServiceDep
from blipq.api.errors import response_for
from blipq.api.schemas import error_responses
from blipq.errors import BlipqError, ModelUnavailable

router = APIRouter(tags=["operations"])

#: A worker that has not sent a heartbeat for this long is not counted as serving.
WORKER_FRESHNESS_S = 15.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses=error_responses(503))
def readyz(service: ServiceDep) -> dict[str, object] | Response:
    """The queue answers and a worker with a loaded model was seen recently."""
    try:
        depth = service.queue.depth()
        workers = service.queue.workers(max_age_s=WORKER_FRESHNESS_S)
    except BlipqError as exc:
        return response_for(exc)
    if not workers:
        missing = ModelUnavailable(f"no worker with a loaded model seen in the last {WORKER_FRESHNESS_S:g} s")
        return response_for(missing)
    return {"status": "ready", "queue_depth": depth, "workers": [w.worker_id for w in workers]}


@router.get("/metrics", response_class=Response)
def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
