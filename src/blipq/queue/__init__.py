"""Queue backends behind one protocol; `open_queue` is the only code that names them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from blipq.errors import QueueUnavailable
from blipq.queue.base import ClaimedImage, JobQueue, WorkerInfo

__all__ = ["ClaimedImage", "JobQueue", "WorkerInfo", "open_queue"]


def open_queue(url: str, *, max_attempts: int = 3) -> JobQueue:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from blipq.queue.sqlite import SqliteQueue

        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise QueueUnavailable(f"queue URL {url!r} names no file; use sqlite:///./data/blipq.db")
        return SqliteQueue(Path(path), max_attempts=max_attempts)
    raise QueueUnavailable(f"unsupported queue URL {url!r}; use sqlite:///path/to/file.db")
