"""Property-based tests of every route from the app's own OpenAPI schema (schemathesis).

Generated requests, valid and invalid, must never get a 5xx, and every response must match the
schema: a documented status code, content type, headers and body. A real worker with the tiny
model runs behind the app, so blocking routes answer instead of timing out: in the embedded mode,
and over a real RabbitMQ.

Examples per route: BLIPQ_SCHEMA_EXAMPLES (default 30 in CI); e.g. 1000 for a long run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import BaseSchema

from blipq.embedded import InProcessBroker
from blipq.gateway.app import create_app
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import open_store
from blipq.inference.batcher import BatcherConfig
from blipq.inference.engine import CaptionEngine
from blipq.inference.fetch import FetchPolicy
from blipq.inference.metrics import InferenceMetrics
from tests.gateway.conftest import ALLOW_LOOPBACK, MODES, running_server

EXAMPLES = int(os.environ.get("BLIPQ_SCHEMA_EXAMPLES", "30"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Semantic checks (a base64 string must also decode to an image) make schema-valid bodies fail on
# purpose, so "positive data is accepted" is not a property of this API; the checks above are.

#: The service under test, in both modes: blocking routes answer in time, jobs stay small, URLs fail fast.
BLOCKING_TIMEOUT_S = 30
MAX_IMAGES = 8
FETCH_TIMEOUT_S = 2


@pytest.fixture(scope="module", params=MODES)
def api_schema(
    request: pytest.FixtureRequest,
    tiny_checkpoint: Path,
    engine: CaptionEngine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BaseSchema]:
    """Embedded: the app in this process, called as ASGI (the cheap way: no server, no HTTP). Over RabbitMQ:
    a real `blipq serve --broker` and `blipq worker` of their own, called over HTTP, since the gateway's
    connection lives on its server's event loop and schemathesis calls an ASGI app on a loop of its own."""
    root = tmp_path_factory.mktemp(f"schema-{request.param}")
    if request.param == "embedded":
        config = GatewaySettings(
            store=f"sqlite:///{root}/store.db", blocking_timeout_s=BLOCKING_TIMEOUT_S, max_images_per_job=MAX_IMAGES
        )
        store = open_store(config.store)
        batching = BatcherConfig(max_batch=4, fetch=FetchPolicy(timeout_s=FETCH_TIMEOUT_S))
        broker = InProcessBroker(engine, batching, store, model="tiny", metrics=InferenceMetrics())
        app = create_app(config, store, broker)
        with TestClient(app):  # the app's lifespan starts and closes the store
            yield schemathesis.openapi.from_asgi("/openapi.json", app)
        return
    env = {
        **ALLOW_LOOPBACK,
        "BLIPQ_BLOCKING_TIMEOUT_S": str(BLOCKING_TIMEOUT_S),
        "BLIPQ_MAX_IMAGES_PER_JOB": str(MAX_IMAGES),
        "BLIPQ_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
    }
    with running_server(request.param, request, tiny_checkpoint, root, env) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_no_server_errors_and_responses_match_the_schema(api_schema: BaseSchema) -> None:
    """Each operation, with schema-valid and schema-violating requests (hypothesis drives the generation;
    the schemathesis pytest plugin is not used, so pytest upgrades cannot break this test's collection)."""
    requests = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            def call(case: Any) -> None:
                nonlocal requests
                requests += 1
                case.call_and_validate(checks=CHECKS)

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: a route without inputs
            except Exception as exc:
                raise AssertionError(f"{operation.label} ({mode.value} data): {exc}") from exc
    print(f"\nschemathesis: {requests} requests, no failures")
    assert requests >= EXAMPLES * 10


def test_the_schema_documents_every_route(api_schema: BaseSchema) -> None:
    paths = set(api_schema.raw_schema["paths"])
    assert {"/captionImage", "/captionImageBlocking", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/captions"} <= paths
    assert {"/v1/hf", "/healthz", "/readyz", "/metrics"} <= paths
