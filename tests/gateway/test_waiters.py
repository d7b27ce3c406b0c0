"""Blocking requests wait on a shared event per job, woken by the outcome, and leave nothing behind."""

from __future__ import annotations

import asyncio
import base64
import threading

import pytest

from blipq.gateway.waiters import Waiters
from tests.gateway.conftest import AppFactory
from tests.helpers import pictures

# The transport matters to every test here: each runs in both modes.
pytestmark = pytest.mark.both_modes


@pytest.mark.anyio
async def test_everyone_waiting_for_a_job_is_woken_once_and_forgotten() -> None:
    waiters = Waiters()
    first, second = waiters.register("job"), waiters.register("job")
    assert first is second
    woken = threading.Thread(target=waiters.finished, args=("job",))  # an outcome on another thread
    woken.start()
    woken.join()
    waiters.finished("job")  # a duplicate outcome
    await asyncio.wait_for(first.wait(), 1)
    waiters.release("job")
    assert len(waiters) == 1
    waiters.release("job")
    assert len(waiters) == 0
    waiters.finished("nobody-waits")
    third = waiters.register("other")
    waiters.wake_all()  # a shared store's notices were cut off: everyone reads their job again
    await asyncio.wait_for(third.wait(), 1)


def test_blocking_requests_leave_no_waiter_behind(make_client: AppFactory) -> None:
    client = make_client()
    body = {"imgb64s": [base64.b64encode(image).decode() for image in pictures(2)]}
    answers: list[int] = []
    requests = [
        threading.Thread(target=lambda: answers.append(client.post("/captionImageBlocking", json=body).status_code))
        for _ in range(3)
    ]
    for request in requests:
        request.start()
    for request in requests:
        request.join(60)
    assert answers == [200, 200, 200]
    assert len(client.app.state.service.waiters) == 0
    timed_out = make_client(blocking_timeout_s=0.1, model_running=False)
    assert timed_out.post("/captionImageBlocking", json=body).status_code == 504
    assert len(timed_out.app.state.service.waiters) == 0
