"""The scale-out queue: Redis Streams (consumer group "workers") hold claimable images, hashes hold
jobs and results, pub/sub wakes blocking requests on any API node. All state changes are Lua
scripts (see redis_scripts.py), so they are atomic however many nodes share the Redis.

Leases are per claim (the protocol lets each claim choose its length), so expiry is tracked in a
sorted set of deadlines and expired images are moved to the new claimer with XCLAIM, instead of
XAUTOCLAIM's single idle-time threshold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from blipq.errors import JobNotFound, QueueUnavailable
from blipq.jobs import CaptionOptions, ErrorInfo, ImageInput, ImageOutcome, Job, JobStatus
from blipq.queue import redis_scripts
from blipq.queue.base import ClaimedImage, Idempotency, WorkerInfo, idempotency_conflict, job_not_found
from blipq.queue.notify import Bell

log = logging.getLogger(__name__)

_PAGE = 200


class RedisQueue:
    """`JobQueue` on Redis. Thread-safe; any number of processes on any machines may share one Redis."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "blipq", max_attempts: int = 3, retention_s: float = 86400
    ) -> None:
        self._redis = client
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.retention_s = retention_s
        self._consumer = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._scripts = {
            name: client.register_script(getattr(redis_scripts, name))
            for name in ("ENQUEUE", "CLAIM", "RECORD", "CANCEL", "RENEW")
        }
        self._finished_bell = Bell()
        self._work_bell = Bell()
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()
        self._closed = threading.Event()

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "blipq", max_attempts: int = 3, retention_s: float = 86400
    ) -> RedisQueue:
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        return cls(client, prefix=prefix, max_attempts=max_attempts, retention_s=retention_s)

    # -- writing -------------------------------------------------------------------------------

    def enqueue(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        *,
        owner: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> str:
        job_id = uuid.uuid4().hex
        options_json = options.canonical_json()
        payload: list[Any] = []
        for image in images:
            payload += ["url", image.url] if image.url is not None else ["data", image.data]
        idem = (idempotency.key, idempotency.fingerprint) if idempotency else ("", "")
        outcome, existing = self._run(
            "ENQUEUE", job_id, options_json, _options_key(options_json), len(images), owner or "", *idem, *payload
        )
        if outcome == b"conflict":
            assert idempotency is not None
            raise idempotency_conflict(idempotency.key, existing.decode())
        return str(existing.decode())

    def claim(self, max_images: int, lease_s: float, options: CaptionOptions | None = None) -> list[ClaimedImage]:
        now = time.time()
        wanted = _options_key(options.canonical_json()) if options is not None else ""
        token = uuid.uuid4().hex
        _, claimed, _ = self._run(
            "CLAIM", now + lease_s, max_images, self.max_attempts, self._consumer, wanted, token, now=now
        )
        if not claimed:
            return []
        rows = [(job.decode(), int(idx), int(attempts)) for job, idx, attempts in claimed]
        with self._errors(), self._redis.pipeline(transaction=False) as pipe:
            for job_id, idx, _ in rows:
                pipe.hget(self._key("data", job_id), str(idx))
                pipe.hget(self._key("img", job_id), f"{idx}:url")
            pipe.hget(self._key("job", rows[0][0]), "options")
            fetched = pipe.execute()
        shared = CaptionOptions.model_validate_json(fetched[-1])
        result = []
        for position, (job_id, idx, attempts) in enumerate(rows):
            data, url = fetched[2 * position], fetched[2 * position + 1]
            image = ImageInput(url=url.decode()) if url is not None else ImageInput(data=data or b"")
            result.append(ClaimedImage(job_id, idx, image, shared, attempts, token))
        return result

    def renew(self, claims: Sequence[ClaimedImage], lease_s: float) -> None:
        if not claims:
            return
        triples: list[Any] = []
        for claim in claims:
            triples += [claim.job_id, claim.index, claim.token]
        self._run("RENEW", time.time() + lease_s, *triples)

    def complete(self, claim: ClaimedImage, caption: str) -> bool:
        return bool(self._run("RECORD", claim.job_id, claim.index, "done", caption, "", ""))

    def fail(self, claim: ClaimedImage, error: ErrorInfo) -> bool:
        return bool(self._run("RECORD", claim.job_id, claim.index, "failed", "", error.code, error.message))

    def cancel(self, job_id: str) -> Job:
        if not self._run("CANCEL", job_id):
            raise job_not_found(job_id)
        return self.get(job_id)

    def purge(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        with self._errors():
            ids = [raw.decode() for raw in self._redis.zrangebyscore(self._key("finished"), "-inf", cutoff)]
            if ids:
                with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.hget(self._key("job", job_id), "idem")
                    idem_keys = [key for key in pipe.execute() if key]
                with self._redis.pipeline(transaction=True) as pipe:
                    for job_id in ids:
                        pipe.delete(self._key("job", job_id), self._key("img", job_id), self._key("data", job_id))
                    if idem_keys:
                        pipe.delete(*idem_keys)
                    pipe.zrem(self._key("jobs"), *ids)
                    pipe.zrem(self._key("finished"), *ids)
                    pipe.execute()
        return len(ids)

    def heartbeat(self, worker: WorkerInfo) -> None:
        record = json.dumps({"model": worker.model, "device": worker.device, "seen_at": worker.seen_at})
        with self._errors():
            self._redis.hset(self._key("workers"), worker.worker_id, record)

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        jobs = self._load([job_id])
        if not jobs:
            raise job_not_found(job_id)
        return jobs[0]

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 100,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        wanted = {status.value for status in statuses} if statuses is not None else None
        with self._errors():
            start: float | str = "-inf"
            if after is not None:
                score = self._redis.zscore(self._key("jobs"), after)
                if score is None:
                    raise JobNotFound(f"cursor {after!r} is not a known job id")
                start = f"({score}"
            picked: list[str] = []
            offset = 0
            while len(picked) < limit:
                page = [
                    raw.decode() for raw in self._redis.zrangebyscore(self._key("jobs"), start, "+inf", offset, _PAGE)
                ]
                if not page:
                    break
                offset += len(page)
                if wanted is None and owner is None:
                    picked += page
                    continue
                with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in page:
                        pipe.hmget(self._key("job", job_id), "status", "owner")
                    fields = pipe.execute()
                picked += [
                    job_id
                    for job_id, (state, job_owner) in zip(page, fields, strict=True)
                    if state
                    and (wanted is None or state.decode() in wanted)
                    and (owner is None or (job_owner or b"").decode() == owner)
                ]
        return self._load(picked[:limit])

    def wait(self, job_id: str, timeout_s: float) -> Job:
        deadline = time.monotonic() + timeout_s
        self._listen()
        while True:
            seen = self._finished_bell.generation()
            job = self.get(job_id)
            remaining = deadline - time.monotonic()
            if job.status.finished or remaining <= 0:
                return job
            # Re-check at least every second: a message published while reconnecting is lost.
            self._finished_bell.wait_for_ring(seen, min(remaining, 1.0))

    def wait_for_work(self, seen: int | None, timeout_s: float) -> int:
        self._listen()
        if seen is not None:
            self._work_bell.wait_for_ring(seen, timeout_s)
        return self._work_bell.generation()

    def depth(self) -> int:
        with self._errors():
            okeys = self._redis.zrange(self._key("streams"), 0, -1)
            with self._redis.pipeline(transaction=False) as pipe:
                for okey in okeys:
                    pipe.xlen(self._key("stream", okey.decode()))
                return int(sum(pipe.execute()))

    def workers(self, max_age_s: float) -> list[WorkerInfo]:
        with self._errors():
            records = self._redis.hgetall(self._key("workers"))
        oldest = time.time() - max_age_s
        found = []
        for worker_id, raw in sorted(records.items()):
            record = json.loads(raw)
            if record["seen_at"] >= oldest:
                found.append(WorkerInfo(worker_id.decode(), record["model"], record["device"], record["seen_at"]))
        return found

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(5)
        self._redis.close()

    # -- internals -----------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise QueueUnavailable(f"Redis queue unavailable: {type(exc).__name__}: {exc}") from None

    def _run(self, name: str, *args: Any, now: float | None = None) -> Any:
        script: Script = self._scripts[name]
        stamp = time.time() if now is None else now
        with self._errors():
            return script(args=[self.prefix, repr(stamp), int(self.retention_s), *args])

    def _load(self, job_ids: Sequence[str]) -> list[Job]:
        if not job_ids:
            return []
        with self._errors(), self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._key("job", job_id))
                pipe.hgetall(self._key("img", job_id))
            replies = pipe.execute()
        jobs = []
        for position, job_id in enumerate(job_ids):
            fields, images = replies[2 * position], replies[2 * position + 1]
            if fields:
                jobs.append(_job(job_id, _text(fields), _text(images)))
        return jobs

    def _listen(self) -> None:
        """Start (once) the thread that turns pub/sub messages into local wake-ups."""
        with self._listener_lock:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._subscribe_forever, name="blipq-redis-pubsub", daemon=True
                )
                self._listener.start()

    def _subscribe_forever(self) -> None:
        backoff = 0.5
        channels = {self._key("finished").encode(): self._finished_bell, self._key("work").encode(): self._work_bell}
        while not self._closed.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*channels)
                backoff = 0.5
                for bell in channels.values():  # anything may have happened while disconnected
                    bell.ring()
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        channels[message["channel"]].ring()
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._closed.is_set():
                    return
                log.warning("Redis pub/sub lost (%s); reconnecting in %.1f s", exc, backoff)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


def _options_key(options_json: str) -> str:
    return hashlib.sha1(options_json.encode(), usedforsecurity=False).hexdigest()[:20]


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}


def _job(job_id: str, fields: dict[str, str], images: dict[str, str]) -> Job:
    outcomes = []
    for index in range(int(fields["n_images"])):
        code = images.get(f"{index}:code")
        error = ErrorInfo(code, images.get(f"{index}:message", "")) if code is not None else None
        outcomes.append(
            ImageOutcome(state=images[f"{index}:state"], caption=images.get(f"{index}:caption"), error=error)  # type: ignore[arg-type]
        )

    def stamp(name: str) -> float | None:
        return float(fields[name]) if name in fields else None

    return Job(
        id=job_id,
        status=JobStatus(fields["status"]),
        options=CaptionOptions.model_validate_json(fields["options"]),
        images=tuple(outcomes),
        created_at=float(fields["created_at"]),
        started_at=stamp("started_at"),
        finished_at=stamp("finished_at"),
        owner=fields.get("owner") or None,
    )
