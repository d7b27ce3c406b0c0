"""Blocking requests wait on an event per job id, set when an outcome finishes the job: one recorded here, or
(a shared store) one another gateway recorded. Everything here runs on the event loop."""

from __future__ import annotations

import asyncio


class Waiters:
    def __init__(self) -> None:
        self._events: dict[str, tuple[asyncio.Event, int]] = {}

    def register(self, job_id: str) -> asyncio.Event:
        """An event for `job_id`, shared by everyone waiting for it. Call `release` when done waiting.

        A woken waiter clears it before it reads the job, and waits again when the job is not finished (a
        wake-up to check, see `wake_all`): a finish after the clear sets it again, one before it is read."""
        event, count = self._events.get(job_id, (asyncio.Event(), 0))
        self._events[job_id] = (event, count + 1)
        return event

    def release(self, job_id: str) -> None:
        event, count = self._events[job_id]
        if count > 1:
            self._events[job_id] = (event, count - 1)
        else:
            del self._events[job_id]

    def finished(self, job_id: str) -> None:
        entry = self._events.get(job_id)
        if entry is not None:
            entry[0].set()

    def wake_all(self) -> None:
        """Every waiter reads its job again: finishes may have gone unannounced (a shared store's listener was
        disconnected for a while)."""
        for event, _ in self._events.values():
            event.set()

    def __len__(self) -> int:
        return len(self._events)
