"""The result store: one SQLite file (WAL) holding jobs, per-image outcomes, idempotency keys, and the
request of every unfinished job, so that an accepted job survives a crash of the process."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from blipq.contract.errors import IdempotencyConflict, JobNotFound, QueueUnavailable
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, ImageOutcome, Job, JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    owner TEXT,
    idem_key TEXT,
    idem_fingerprint TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(ifnull(owner, ''), idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_images (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB,
    url TEXT,
    state TEXT NOT NULL,
    caption TEXT,
    error_code TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, idx)
);
"""

#: A store written by the claim/lease queue of earlier versions: its jobs are carried over on open.
_EARLIER_LAYOUT = """
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
INSERT INTO job_images (job_id, idx, data, url, state, caption, error_code, error_message)
    SELECT job_id, idx, data, url, CASE state WHEN 'running' THEN 'queued' ELSE state END,
           caption, error_code, error_message FROM images;
UPDATE jobs SET status = 'queued' WHERE status = 'running';
DROP TABLE images;
DROP TABLE IF EXISTS workers;
"""

_UNFINISHED = ("queued", "running")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredRequest:
    """An unfinished job as it was accepted, to be dispatched (again): its images without an outcome."""

    job_id: str
    images: tuple[ImageInput, ...]
    options: CaptionOptions
    attempts: int  # times the model started on it


def open_store(url: str) -> JobStore:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.scheme != "sqlite" or not path:
        raise QueueUnavailable(f"unsupported store URL {url!r}; use sqlite:///./data/blipq.db")
    return JobStore(Path(path))


def job_not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job with id {job_id!r} (it may have been purged after the retention period)")


class JobStore:
    """Thread-safe. One process opens a store: each gateway has its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: an accepted job survives power loss, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
            earlier = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'images'").fetchone()
            self._db.executescript(SCHEMA)
            if earlier:
                self._db.executescript(f"BEGIN; {_EARLIER_LAYOUT} COMMIT;")
        except (sqlite3.Error, OSError) as exc:
            raise QueueUnavailable(f"cannot open the store at {path}: {exc}") from None
        self._lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------

    def create(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        *,
        owner: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> tuple[str, bool]:
        """Store a job; returns its id and whether it is new.

        With `idempotency`, a key this owner already used returns that job's id (not new) when the
        fingerprint matches and raises IdempotencyConflict when it does not.
        """
        with self._transaction() as db:
            if idempotency is not None:
                row = db.execute(
                    "SELECT id, idem_fingerprint FROM jobs WHERE ifnull(owner, '') = ? AND idem_key = ?",
                    (owner or "", idempotency.key),
                ).fetchone()
                if row is not None:
                    if row[1] != idempotency.fingerprint:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency.key!r} was already used for job {row[0]} "
                            "with a different request body"
                        )
                    return str(row[0]), False
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (id, status, options, n_images, created_at, owner, idem_key, idem_fingerprint) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    options.canonical_json(),
                    len(images),
                    time.time(),
                    owner,
                    idempotency.key if idempotency else None,
                    idempotency.fingerprint if idempotency else None,
                ),
            )
            db.executemany(
                "INSERT INTO job_images (job_id, idx, data, url, state) VALUES (?, ?, ?, ?, 'queued')",
                [(job_id, index, image.data, image.url) for index, image in enumerate(images)],
            )
        return job_id, True

    def discard(self, job_id: str) -> None:
        """Forget a job the broker refused: it was never accepted."""
        with self._transaction() as db:
            db.execute("DELETE FROM job_images WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def started(self, job_id: str) -> None:
        """The model started on the job: one more attempt (a job that stops the process each time runs out)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempts = attempts + 1 "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )
            db.execute("UPDATE job_images SET state = 'running' WHERE job_id = ? AND state = 'queued'", (job_id,))

    def requeued(self, job_id: str) -> None:
        """Dispatched again after a restart: waiting, not running, until the model starts on it again."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'running'", (job_id,))
            db.execute("UPDATE job_images SET state = 'queued' WHERE job_id = ? AND state = 'running'", (job_id,))

    def finish(self, job_id: str, results: Sequence[ImageResult]) -> bool:
        """Record the results of the images that were dispatched: every image of the job, or (for a job
        that already had some outcomes, carried over from an earlier store) the ones still pending, in
        order. The first outcome wins: returns False (and changes nothing) when the job had already
        finished or was cancelled, or is unknown (purged)."""
        rows = [
            (
                "done" if result.caption is not None else "failed",
                result.caption,
                result.error.code if result.error else None,
                result.error.message if result.error else None,
            )
            for result in results
        ]
        return self._finish(job_id, rows)

    def fail(self, job_id: str, error: ErrorInfo) -> bool:
        """Fail every pending image of a job that could not be run at all; False when it already had an outcome."""
        return self._finish(job_id, None, ("failed", None, error.code, error.message))

    def cancel(self, job_id: str) -> Job:
        with self._transaction() as db:
            if not self._status(db, job_id).finished:
                db.execute(
                    "UPDATE job_images SET state = 'cancelled', data = NULL WHERE job_id = ? AND state IN (?, ?)",
                    (job_id, *_UNFINISHED),
                )
                db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (time.time(), job_id))
        return self.get(job_id)

    def purge(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        with self._transaction() as db:
            ids = [(row[0],) for row in db.execute("SELECT id FROM jobs WHERE finished_at < ?", (cutoff,))]
            db.executemany("DELETE FROM job_images WHERE job_id = ?", ids)
            db.executemany("DELETE FROM jobs WHERE id = ?", ids)
        return len(ids)

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
        """Jobs oldest first, optionally only those in `statuses` or created by `owner`, after the job `after`."""
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

    def unfinished(self) -> list[StoredRequest]:
        """Every job accepted and not finished, oldest first, with its request."""
        with self._reading() as db:
            jobs = db.execute(
                "SELECT id, options, attempts FROM jobs WHERE status IN (?, ?) ORDER BY seq", _UNFINISHED
            ).fetchall()
            requests = []
            for job_id, options, attempts in jobs:
                images = db.execute(
                    "SELECT data, url FROM job_images WHERE job_id = ? AND state IN (?, ?) ORDER BY idx",
                    (job_id, *_UNFINISHED),
                )
                requests.append(
                    StoredRequest(
                        job_id=job_id,
                        images=tuple(
                            ImageInput(data=data) if url is None else ImageInput(url=url) for data, url in images
                        ),
                        options=CaptionOptions.model_validate_json(options),
                        attempts=attempts,
                    )
                )
        return requests

    def pending_images(self) -> int:
        """Images of unfinished jobs: queued or being captioned."""
        with self._reading() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM job_images WHERE state IN (?, ?)", _UNFINISHED).fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
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
                raise QueueUnavailable(f"store error at {self.path}: {exc}") from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise QueueUnavailable(f"store error at {self.path}: {exc}") from None

    def _finish(
        self, job_id: str, rows: Sequence[tuple[object, ...]] | None, every_pending: tuple[object, ...] = ()
    ) -> bool:
        """Outcomes `rows` (state, caption, code, message) for the pending images in order, or `every_pending`
        for each of them."""
        with self._transaction() as db:
            row = db.execute("SELECT status, n_images FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or JobStatus(row[0]).finished:
                return False
            pending = [
                index
                for (index,) in db.execute(
                    "SELECT idx FROM job_images WHERE job_id = ? AND state IN (?, ?) ORDER BY idx",
                    (job_id, *_UNFINISHED),
                )
            ]
            if rows is None:
                rows = [every_pending] * len(pending)
            elif len(rows) == row[1] != len(pending):  # a reply for the whole job: keep only the pending images
                rows = [rows[index] for index in pending]
            if len(rows) != len(pending):
                log.warning("job %s: %d results for %d pending images; ignored", job_id, len(rows), len(pending))
                return False
            db.executemany(
                "UPDATE job_images SET state = ?, caption = ?, error_code = ?, error_message = ?, data = NULL "
                "WHERE job_id = ? AND idx = ?",
                [(*outcome, job_id, index) for outcome, index in zip(rows, pending, strict=True)],
            )
            (done,) = db.execute(
                "SELECT COUNT(*) FROM job_images WHERE job_id = ? AND state = 'done'", (job_id,)
            ).fetchone()
            now = time.time()
            db.execute(
                "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?), finished_at = ? WHERE id = ?",
                ((JobStatus.SUCCEEDED if done else JobStatus.FAILED).value, now, now, job_id),
            )
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
            f"SELECT job_id, state, caption, error_code, error_message FROM job_images WHERE job_id IN ({marks}) "
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
