"""Blocking requests wait on an event per job id, set when an outcome finishes the job: one recorded here, or
(a shared store) one another gateway recorded."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass


@dataclass
class _Waiting:
    event: asyncio.Event
    loop: asyncio.AbstractEventLoop  # the one the requests wait on: the event is set there
    count: int


class Waiters:
    """Thread-safe: an outcome may be recorded on another thread or event loop than the one a request waits on
    (the embedded mode's model thread hands outcomes to the app's loop; a test client may call the app on a
    loop of its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiting] = {}

    def register(self, job_id: str) -> asyncio.Event:
        """An event for `job_id`, shared by everyone waiting for it. Call `release` when done waiting.

        A woken waiter clears it before it reads the job, and waits again when the job is not finished (a
        wake-up to check, see `wake_all`): a finish after the clear sets it again, one before it is read."""
        with self._lock:
            waiting = self._waiting.get(job_id)
            if waiting is None:
                waiting = self._waiting[job_id] = _Waiting(asyncio.Event(), asyncio.get_running_loop(), 0)
            waiting.count += 1
            return waiting.event

    def release(self, job_id: str) -> None:
        with self._lock:
            waiting = self._waiting[job_id]
            waiting.count -= 1
            if not waiting.count:
                del self._waiting[job_id]

    def finished(self, job_id: str) -> None:
        with self._lock:
            waiting = self._waiting.get(job_id)
        if waiting is not None:
            _wake(waiting)

    def wake_all(self) -> None:
        """Every waiter reads its job again: finishes may have gone unannounced (a shared store's listener was
        disconnected for a while)."""
        with self._lock:
            everyone = list(self._waiting.values())
        for waiting in everyone:
            _wake(waiting)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)


def _wake(waiting: _Waiting) -> None:
    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits there any more
        waiting.loop.call_soon_threadsafe(waiting.event.set)
