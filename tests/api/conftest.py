from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server


@pytest.fixture(scope="package")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `blipq serve` (uvicorn + SQLite + one worker process) shared by the API tests."""
    # The loopback file server stands in for the internet: allow it past the SSRF address check.
    allow_loopback = {"BLIPQ_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
    running = Server(tiny_checkpoint, tmp_path_factory.mktemp("serve"), env=allow_loopback).start()
    yield running
    running.stop()
