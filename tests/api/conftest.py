from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server


@pytest.fixture(scope="package")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `blipq serve` (uvicorn + SQLite + one worker process) shared by the API tests."""
    running = Server(tiny_checkpoint, tmp_path_factory.mktemp("serve")).start()
    yield running
    running.stop()
