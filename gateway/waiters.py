"""Blocking requests wait on a future per job id, resolved when the job's outcome is recorded."""

from __future__ import annotations

import threading
from concurrent.futures import Future


class Waiters:
    """Thread-safe: outcomes arrive on the transport's thread, waiters sit in request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, tuple[Future[None], int]] = {}

    def register(self, job_id: str) -> Future[None]:
        """A future for `job_id`, shared by everyone waiting for it. Call `release` when done waiting."""
        with self._lock:
            future, count = self._futures.get(job_id, (Future(), 0))
            self._futures[job_id] = (future, count + 1)
        return future

    def release(self, job_id: str) -> None:
        with self._lock:
            future, count = self._futures[job_id]
            if count > 1:
                self._futures[job_id] = (future, count - 1)
            else:
                del self._futures[job_id]

    def finished(self, job_id: str) -> None:
        with self._lock:
            entry = self._futures.get(job_id)
            if entry is not None and not entry[0].done():
                entry[0].set_result(None)  # nothing is chained to these futures: safe under the lock

    def __len__(self) -> int:
        with self._lock:
            return len(self._futures)
