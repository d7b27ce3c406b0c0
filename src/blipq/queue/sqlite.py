"""The embedded queue: one SQLite file in WAL mode, shared by the API and local worker processes."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from blipq.errors import JobNotFound, QueueUnavailable
from blipq.jobs import CaptionOptions, ErrorInfo, ImageInput, ImageOutcome, Job, JobStatus
from blipq.queue.base import ClaimedImage, Idempotency, WorkerInfo, idempotency_conflict, job_not_found
from blipq.queue.notify import Doorbell

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    n_finished INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    owner TEXT,
    idem_key TEXT,
    idem_fingerprint TEXT
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
CREATE TABLE IF NOT EXISTS images (
    job_seq INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    options TEXT NOT NULL,
    data BLOB,
    url TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    lease_token TEXT,
    caption TEXT,
    error_code TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS images_claimable ON images(state, job_seq, idx);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    device TEXT NOT NULL,
    seen_at REAL NOT NULL
);
"""

#: Columns added after the first release; a database created before them gets them on open.
_ADDED_JOB_COLUMNS = ("owner", "idem_key", "idem_fingerprint")
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(ifnull(owner, ''), idem_key) WHERE idem_key IS NOT NULL;
"""

_CLAIMABLE = "(state = 'queued' OR (state = 'running' AND lease_until < :now))"


class SqliteQueue:
    """`JobQueue` on SQLite. Thread-safe; several processes may open the same file."""

    def __init__(self, path: Path, *, max_attempts: int = 3) -> None:
        self.path = path
        self.max_attempts = max_attempts
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: an accepted job survives power loss, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for column in _ADDED_JOB_COLUMNS:
                if column not in present:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
            self._db.executescript(_INDEXES)
        except (sqlite3.Error, OSError) as exc:
            raise QueueUnavailable(f"cannot open the SQLite queue at {path}: {exc}") from None
        self._lock = threading.Lock()
        self._doorbell = Doorbell(f"{path.resolve()}:finished")
        self._work_bell = Doorbell(f"{path.resolve()}:work")

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
        with self._transaction() as db:
            if idempotency is not None:
                row = db.execute(
                    "SELECT id, idem_fingerprint FROM jobs WHERE ifnull(owner, '') = ? AND idem_key = ?",
                    (owner or "", idempotency.key),
                ).fetchone()
                if row is not None:
                    if row[1] != idempotency.fingerprint:
                        raise idempotency_conflict(idempotency.key, row[0])
                    return str(row[0])
            cursor = db.execute(
                "INSERT INTO jobs (id, status, options, n_images, created_at, owner, idem_key, idem_fingerprint) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    options_json,
                    len(images),
                    time.time(),
                    owner,
                    idempotency.key if idempotency else None,
                    idempotency.fingerprint if idempotency else None,
                ),
            )
            seq = cursor.lastrowid
            db.executemany(
                "INSERT INTO images (job_seq, job_id, idx, options, data, url, state) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued')",
                [(seq, job_id, index, options_json, image.data, image.url) for index, image in enumerate(images)],
            )
        self._work_bell.ring()
        return job_id

    def claim(self, max_images: int, lease_s: float, options: CaptionOptions | None = None) -> list[ClaimedImage]:
        now = time.time()
        finished: list[str] = []
        with self._transaction() as db:
            finished += self._fail_exhausted(db, now)
            if options is not None:
                first = (options.canonical_json(),)
            else:
                first = db.execute(
                    f"SELECT options FROM images WHERE {_CLAIMABLE} ORDER BY job_seq, idx LIMIT 1", {"now": now}
                ).fetchone()
            if first is None:
                rows = []
            else:
                rows = db.execute(
                    f"SELECT job_id, idx, data, url, attempts FROM images WHERE options = :options AND {_CLAIMABLE} "
                    "ORDER BY job_seq, idx LIMIT :n",
                    {"options": first[0], "now": now, "n": max_images},
                ).fetchall()
                token = uuid.uuid4().hex
                db.executemany(
                    "UPDATE images SET state = 'running', attempts = attempts + 1, lease_until = ?, lease_token = ? "
                    "WHERE job_id = ? AND idx = ?",
                    [(now + lease_s, token, job_id, idx) for job_id, idx, *_ in rows],
                )
                db.executemany(
                    "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?) "
                    "WHERE id = ? AND status = 'queued'",
                    [(now, job_id) for job_id in {row[0] for row in rows}],
                )
        if finished:
            self._doorbell.ring()
        if not rows:
            return []
        shared = CaptionOptions.model_validate_json(first[0])
        return [
            ClaimedImage(
                job_id=job_id,
                index=idx,
                input=ImageInput(data=data) if url is None else ImageInput(url=url),
                options=shared,
                attempt=attempts + 1,
                token=token,
            )
            for job_id, idx, data, url, attempts in rows
        ]

    def renew(self, claims: Sequence[ClaimedImage], lease_s: float) -> None:
        until = time.time() + lease_s
        with self._transaction() as db:
            db.executemany(
                "UPDATE images SET lease_until = ? WHERE job_id = ? AND idx = ? AND lease_token = ? "
                "AND state = 'running'",
                [(until, claim.job_id, claim.index, claim.token) for claim in claims],
            )

    def complete(self, claim: ClaimedImage, caption: str) -> bool:
        return self._record(claim, "done", caption=caption)

    def fail(self, claim: ClaimedImage, error: ErrorInfo) -> bool:
        return self._record(claim, "failed", error=error)

    def cancel(self, job_id: str) -> Job:
        now = time.time()
        with self._transaction() as db:
            status = self._status(db, job_id)
            if not status.finished:
                db.execute(
                    "UPDATE images SET state = 'cancelled', data = NULL "
                    "WHERE job_id = ? AND state IN ('queued', 'running')",
                    (job_id,),
                )
                db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (now, job_id))
        self._doorbell.ring()
        return self.get(job_id)

    def purge(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        with self._transaction() as db:
            ids = [row[0] for row in db.execute("SELECT id FROM jobs WHERE finished_at < ?", (cutoff,))]
            db.executemany("DELETE FROM images WHERE job_id = ?", [(job_id,) for job_id in ids])
            db.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in ids])
        return len(ids)

    def heartbeat(self, worker: WorkerInfo) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO workers (worker_id, model, device, seen_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(worker_id) DO UPDATE SET model = excluded.model, device = excluded.device, "
                "seen_at = excluded.seen_at",
                (worker.worker_id, worker.model, worker.device, worker.seen_at),
            )

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self._reading() as db:
            jobs = self._load_jobs(db, "WHERE id = ?", (job_id,))
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
        clauses: list[str] = []
        params: list[object] = []
        with self._reading() as db:
            if after is not None:
                row = db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if row is None:
                    raise JobNotFound(f"cursor {after!r} is not a known job id")
                clauses.append("seq > ?")
                params.append(row[0])
            if owner is not None:
                clauses.append("owner = ?")
                params.append(owner)
            if statuses is not None:
                clauses.append(f"status IN ({','.join('?' * len(statuses))})")
                params.extend(status.value for status in statuses)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            return self._load_jobs(db, f"{where} ORDER BY seq LIMIT ?", (*params, limit))

    def wait(self, job_id: str, timeout_s: float) -> Job:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self._doorbell.generation()
            job = self.get(job_id)
            remaining = deadline - time.monotonic()
            if job.status.finished or remaining <= 0:
                return job
            # Re-check at least every second in case a wake-up datagram was dropped.
            self._doorbell.wait_for_ring(seen, min(remaining, 1.0))

    def wait_for_work(self, seen: int | None, timeout_s: float) -> int:
        """Sleep until a job is enqueued after the ring count `seen`, or the timeout; returns the new count."""
        if seen is not None:
            self._work_bell.wait_for_ring(seen, timeout_s)
        return self._work_bell.generation()

    def depth(self) -> int:
        with self._reading() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM images WHERE state IN ('queued', 'running')").fetchone()
        return int(count)

    def workers(self, max_age_s: float) -> list[WorkerInfo]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT worker_id, model, device, seen_at FROM workers WHERE seen_at >= ? ORDER BY worker_id",
                (time.time() - max_age_s,),
            ).fetchall()
        return [WorkerInfo(*row) for row in rows]

    def close(self) -> None:
        self._doorbell.close()
        self._work_bell.close()
        with self._lock:
            self._db.close()

    # -- internals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so two claimers never read the same rows."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise QueueUnavailable(f"SQLite queue error at {self.path}: {exc}") from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise QueueUnavailable(f"SQLite queue error at {self.path}: {exc}") from None

    def _record(
        self, claim: ClaimedImage, state: str, *, caption: str | None = None, error: ErrorInfo | None = None
    ) -> bool:
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE images SET state = ?, caption = ?, error_code = ?, error_message = ?, data = NULL, "
                "lease_until = NULL WHERE job_id = ? AND idx = ? AND state IN ('queued', 'running')",
                (state, caption, error and error.code, error and error.message, claim.job_id, claim.index),
            ).rowcount
            finished = changed and self._count_finished(db, claim.job_id, 1)
        if finished:
            self._doorbell.ring()
        return bool(changed)

    def _fail_exhausted(self, db: sqlite3.Connection, now: float) -> list[str]:
        """Images whose lease expired after their last allowed attempt: a worker died on them each time."""
        rows = db.execute(
            "SELECT job_id, idx, attempts FROM images WHERE state = 'running' AND lease_until < ? AND attempts >= ?",
            (now, self.max_attempts),
        ).fetchall()
        finished = []
        for job_id, idx, attempts in rows:
            db.execute(
                "UPDATE images SET state = 'failed', error_code = 'worker_lost', error_message = ?, data = NULL "
                "WHERE job_id = ? AND idx = ?",
                (f"the worker captioning this image stopped {attempts} times; giving up", job_id, idx),
            )
            if self._count_finished(db, job_id, 1):
                finished.append(job_id)
        return finished

    def _count_finished(self, db: sqlite3.Connection, job_id: str, count: int) -> bool:
        """Add `count` finished images to the job; True when that finishes the job."""
        db.execute("UPDATE jobs SET n_finished = n_finished + ? WHERE id = ?", (count, job_id))
        n_images, n_finished, status = db.execute(
            "SELECT n_images, n_finished, status FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if n_finished < n_images or JobStatus(status).finished:
            return False
        (done,) = db.execute("SELECT COUNT(*) FROM images WHERE job_id = ? AND state = 'done'", (job_id,)).fetchone()
        outcome = JobStatus.SUCCEEDED if done else JobStatus.FAILED
        db.execute("UPDATE jobs SET status = ?, finished_at = ? WHERE id = ?", (outcome.value, time.time(), job_id))
        return True

    def _status(self, db: sqlite3.Connection, job_id: str) -> JobStatus:
        row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise job_not_found(job_id)
        return JobStatus(row[0])

    def _load_jobs(self, db: sqlite3.Connection, tail: str, params: Sequence[object]) -> list[Job]:
        rows = db.execute(
            f"SELECT id, status, options, created_at, started_at, finished_at, owner FROM jobs {tail}", params
        ).fetchall()
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        images: dict[str, list[ImageOutcome]] = {row[0]: [] for row in rows}
        for job_id, state, caption, code, message in db.execute(
            f"SELECT job_id, state, caption, error_code, error_message FROM images WHERE job_id IN ({marks}) "
            "ORDER BY job_id, idx",
            [row[0] for row in rows],
        ):
            error = ErrorInfo(code, message) if code is not None else None
            images[job_id].append(ImageOutcome(state=state, caption=caption, error=error))
        return [
            Job(
                id=job_id,
                status=JobStatus(status),
                options=CaptionOptions.model_validate_json(options),
                images=tuple(images[job_id]),
                created_at=created_at,
                started_at=started_at,
                finished_at=finished_at,
                owner=owner,
            )
            for job_id, status, options, created_at, started_at, finished_at, owner in rows
        ]
