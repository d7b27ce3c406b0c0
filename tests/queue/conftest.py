"""Backends under the shared contract suite. A new backend adds one parameter here."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blipq.queue import JobQueue, open_queue

QueueFactory = Callable[..., JobQueue]


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        # One redis-server per session; a fresh key prefix per test instead of flushing it.
        redis_url: str = request.getfixturevalue("redis_url")
        return f"{redis_url}?prefix=test-{uuid.uuid4().hex[:12]}"
    return f"sqlite:///{tmp_path}/queue.db"


@pytest.fixture
def open_q(queue_url: str) -> Iterator[QueueFactory]:
    """Opens queues on the backend under test; all are closed after the test."""
    opened: list[JobQueue] = []

    def factory(**kwargs: object) -> JobQueue:
        queue = open_queue(queue_url, **kwargs)  # type: ignore[arg-type]
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        queue.close()


@pytest.fixture
def queue(open_q: QueueFactory) -> JobQueue:
    return open_q()
