from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from blipq.api import create_app
from blipq.config import Settings
from blipq.queue import open_queue
from tests.server import Server


@pytest.fixture(scope="package")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `blipq serve` (uvicorn + SQLite + one worker process) shared by the API tests."""
    # The loopback file server stands in for the internet: allow it past the SSRF address check.
    allow_loopback = {"BLIPQ_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
    running = Server(tiny_checkpoint, tmp_path_factory.mktemp("serve"), env=allow_loopback).start()
    yield running
    running.stop()


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[AppFactory]:
    """Build the app in-process on a real SQLite queue with the given settings (no worker unless a test
    starts one on `client.app.state.service.queue`)."""
    stack = ExitStack()
    numbers = itertools.count()

    def build(**overrides: Any) -> TestClient:
        settings = Settings(queue=f"sqlite:///{tmp_path}/q-{next(numbers)}.db", **overrides)
        queue = open_queue(settings.queue)
        stack.callback(queue.close)
        return stack.enter_context(TestClient(create_app(settings, queue)))

    with stack:
        yield build
