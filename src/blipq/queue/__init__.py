"""Queue backends behind one protocol; `open_queue` is the only code that names them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from blipq.errors import QueueUnavailable
from blipq.queue.base import ClaimedImage, JobQueue, WorkerInfo

__all__ = ["ClaimedImage", "JobQueue", "WorkerInfo", "open_queue"]


def open_queue(url: str, *, max_attempts: int = 3, retention_s: float = 86400) -> JobQueue:
    """Open the queue named by `url`.

    - `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`: one machine, no other service.
    - `redis://[:password@]host:port/db`, `rediss://...` (TLS): many machines. An optional
      `?prefix=name` query parameter namespaces the keys (default `blipq`).
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from blipq.queue.sqlite import SqliteQueue

        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise QueueUnavailable(f"queue URL {url!r} names no file; use sqlite:///./data/blipq.db")
        return SqliteQueue(Path(path), max_attempts=max_attempts)
    if parts.scheme in ("redis", "rediss"):
        from blipq.queue.redis import RedisQueue

        query = dict(parse_qsl(parts.query))
        prefix = query.pop("prefix", "blipq")
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        return RedisQueue.from_url(client_url, prefix=prefix, max_attempts=max_attempts, retention_s=retention_s)
    raise QueueUnavailable(f"unsupported queue URL {url!r}; use sqlite:///path/to/file.db or redis://host:port/db")
