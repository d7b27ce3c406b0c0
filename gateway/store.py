"""The result store: one SQLite file (WAL) holding jobs, per-image outcomes, idempotency keys and, where the
transport keeps nothing across a restart (the embedded mode), the request of every unfinished job, so that
an accepted job survives a crash of the process.

Writes go through `SqliteFile`'s writer thread, grouped into one commit. A job created, the outcomes
(`started`, `finish`, `fail`) and a refused job discarded return a future done once committed, so the thread
that hands them over (the event loop, the model's) never waits on disk; the rarer writes (`cancel`,
`requeued`, `purge`) block their caller until committed."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from blipq.contract.errors import IdempotencyConflict, JobNotFound, StoreUnavailable
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, ImageOutcome, Job, JobStatus
from blipq.gateway.sqlite_file import SqliteFile
from blipq.gateway.store_outcomes import UNFINISHED, Recorded, record_outcomes
from blipq.gateway.store_schema import prepare_schema

#: The states written out, not bound: only then does SQLite count from the small partial index
#: job_images_pending instead of reading every row.
_PENDING_COUNT = "SELECT COUNT(*) FROM job_images WHERE state IN ('queued', 'running')"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredRequest:
    """An unfinished job as it was accepted, to be dispatched (again): its images without an outcome."""

    job_id: str
    images: tuple[ImageInput, ...] | None  # None: accepted with its bytes left to a broker (keep_images=False)
    options: CaptionOptions
    attempts: int  # times the model started on it
    indices: tuple[int, ...]  # the job's index of each image
    published: bool  # the broker confirmed it


@dataclass(frozen=True)
class UnfinishedJob:
    job_id: str
    attempts: int  # times the model started on it
    published: bool  # the broker confirmed it
    complete: bool  # every image without an outcome has its bytes or URL here (see `create`'s keep_images)


def open_store(url: str) -> JobStore:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.scheme != "sqlite" or not path:
        raise StoreUnavailable(f"unsupported store URL {url!r}; use sqlite:///./data/blipq.db")
    return JobStore(Path(path))


class PendingLimit(Exception):
    """A job refused because too many images wait already (`create`'s max_pending)."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} images wait")
        self.depth = depth


def job_not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job with id {job_id!r} (it may have been purged after the retention period)")


class JobStore:
    """Thread-safe. One process opens a store: each gateway has its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path, prepare_schema)

    # -- writing -------------------------------------------------------------------------------

    def create(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        *,
        owner: str | None = None,
        idempotency: Idempotency | None = None,
        keep_images: bool = True,
        max_pending: int = 0,
        job_id: str | None = None,
    ) -> Future[tuple[str, bool]]:
        """Store a job; the future holds its id and whether it is new, once committed.

        With `idempotency`, a key this owner already used returns that job's id (not new) when the
        fingerprint matches and raises IdempotencyConflict when it does not. `keep_images=False`: the
        image bytes are not stored (a transport that keeps the request until it is answered has them).
        `max_pending`: PendingLimit instead, when more images than that would wait (0: no limit).
        `job_id`: the new job's id (default: a random one).
        """

        def create(db: sqlite3.Connection) -> tuple[str, bool]:
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
            if max_pending:
                (depth,) = db.execute(_PENDING_COUNT).fetchone()
                if depth and depth + len(images) > max_pending:
                    raise PendingLimit(depth)
            new_id = job_id or uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (id, status, options, n_images, created_at, owner, idem_key, idem_fingerprint, "
                "published) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, 0)",
                (
                    new_id,
                    options.canonical_json(),
                    len(images),
                    time.time(),
                    owner,
                    idempotency.key if idempotency else None,
                    idempotency.fingerprint if idempotency else None,
                ),
            )
            db.executemany(
                "INSERT INTO job_images (job_id, idx, url, state) VALUES (?, ?, ?, 'queued')",
                [(new_id, index, image.url) for index, image in enumerate(images)],
            )
            if keep_images:
                db.executemany(
                    "INSERT INTO job_blobs (job_id, idx, data) VALUES (?, ?, ?)",
                    [(new_id, index, image.data) for index, image in enumerate(images) if image.data is not None],
                )
            return new_id, True

        return self._file.write(create)

    def published(self, job_id: str, *, keep_images: bool) -> Future[None]:
        """The broker confirmed the job's message. `keep_images=False`: the broker keeps the request until it is
        answered, so its bytes are needed here no more."""

        def published(db: sqlite3.Connection) -> None:
            db.execute("UPDATE jobs SET published = 1 WHERE id = ?", (job_id,))
            if not keep_images:
                db.execute("DELETE FROM job_blobs WHERE job_id = ?", (job_id,))

        return self._file.write(published)

    def discard(self, job_id: str) -> Future[None]:
        """Forget a job the broker refused: it was never accepted."""

        def discard(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM job_blobs WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job_images WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

        return self._file.write(discard)

    def started(self, job_id: str) -> Future[None]:
        """The model started on the job: one more attempt (a job that stops the process each time runs out)."""

        def started(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempts = attempts + 1 "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )
            db.execute("UPDATE job_images SET state = 'running' WHERE job_id = ? AND state = 'queued'", (job_id,))

        return self._file.write(started)

    def requeued(self, job_id: str) -> None:
        """Dispatched again after a restart: waiting, not running, until the model starts on it again."""

        def requeued(db: sqlite3.Connection) -> None:
            db.execute("UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'running'", (job_id,))
            db.execute("UPDATE job_images SET state = 'queued' WHERE job_id = ? AND state = 'running'", (job_id,))

        self._file.write(requeued).result()

    def finish(
        self, job_id: str, results: Sequence[ImageResult], indices: Sequence[int] | None = None
    ) -> Future[Recorded]:
        """Record the results of the images that were dispatched: those at `indices` (one part of a split job),
        else every image of the job, or (for a job that already had some outcomes, carried over from an earlier
        store) the ones still pending, in order. The first outcome of each image wins; the job is finished once
        every image has one. Nothing changes (`new` False) for a job finished, cancelled or unknown (purged)."""
        rows = [
            (
                "done" if result.caption is not None else "failed",
                result.caption,
                result.error.code if result.error else None,
                result.error.message if result.error else None,
            )
            for result in results
        ]
        return self._file.write(lambda db: record_outcomes(db, job_id, rows, indices))

    def fail(self, job_id: str, error: ErrorInfo, indices: Sequence[int] | None = None) -> Future[Recorded]:
        """Fail the pending images (those at `indices`, else all) that could not be run at all."""
        failed = ("failed", None, error.code, error.message)
        return self._file.write(lambda db: record_outcomes(db, job_id, None, indices, failed))

    def cancel(self, job_id: str) -> Job:
        def cancel(db: sqlite3.Connection) -> None:
            if not self._status(db, job_id).finished:
                db.execute(
                    "UPDATE job_images SET state = 'cancelled' WHERE job_id = ? AND state IN (?, ?)",
                    (job_id, *UNFINISHED),
                )
                db.execute("DELETE FROM job_blobs WHERE job_id = ?", (job_id,))
                db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (time.time(), job_id))

        self._file.write(cancel).result()
        return self.get(job_id)

    def purge(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s

        def purge(db: sqlite3.Connection) -> int:
            ids = [(row[0],) for row in db.execute("SELECT id FROM jobs WHERE finished_at < ?", (cutoff,))]
            db.executemany("DELETE FROM job_blobs WHERE job_id = ?", ids)
            db.executemany("DELETE FROM job_images WHERE job_id = ?", ids)
            db.executemany("DELETE FROM jobs WHERE id = ?", ids)
            return len(ids)

        return self._file.write(purge).result()

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self._file.reading() as db:
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
        with self._file.reading() as db:
            if after is not None:
                # Another owner's job is no cursor: that would tell whether its id exists.
                row = db.execute(
                    "SELECT seq FROM jobs WHERE id = ? AND (? IS NULL OR owner = ?)", (after, owner, owner)
                ).fetchone()
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

    def unfinished_jobs(self) -> list[UnfinishedJob]:
        """Every job accepted and not finished, oldest first, without its images (read one at a time with
        `request`, so that a long backlog never sits in memory at once)."""
        with self._file.reading() as db:
            rows = db.execute(
                "SELECT id, attempts, published, NOT EXISTS (SELECT 1 FROM job_images LEFT JOIN job_blobs "
                "USING (job_id, idx) WHERE job_id = jobs.id AND state IN (?, ?) AND url IS NULL AND data IS NULL) "
                "FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                (*UNFINISHED, *UNFINISHED),
            ).fetchall()
        return [
            UnfinishedJob(job_id, attempts, bool(published), bool(kept)) for job_id, attempts, published, kept in rows
        ]

    def request(self, job_id: str) -> StoredRequest | None:
        """An unfinished job as it was accepted, its images without an outcome yet; None when it is finished,
        cancelled or unknown."""
        with self._file.reading() as db:
            job = db.execute(
                "SELECT options, attempts, published FROM jobs WHERE id = ? AND status IN (?, ?)",
                (job_id, *UNFINISHED),
            ).fetchone()
            if job is None:
                return None
            rows = db.execute(
                "SELECT idx, data, url FROM job_images LEFT JOIN job_blobs USING (job_id, idx) "
                "WHERE job_id = ? AND state IN (?, ?) ORDER BY idx",
                (job_id, *UNFINISHED),
            ).fetchall()
        options, attempts, published = job
        images = None
        if all(data is not None or url is not None for _, data, url in rows):
            images = tuple(ImageInput(data=data) if url is None else ImageInput(url=url) for _, data, url in rows)
        return StoredRequest(
            job_id,
            images,
            CaptionOptions.model_validate_json(options),
            attempts,
            tuple(index for index, _, _ in rows),
            bool(published),
        )

    def pending_images(self) -> int:
        """Images of unfinished jobs: queued or being captioned."""
        with self._file.reading() as db:
            (count,) = db.execute(_PENDING_COUNT).fetchone()
        return int(count)

    def flush(self) -> None:
        """Wait until every write queued so far (outcomes included) is committed."""
        self._file.flush()

    def close(self) -> None:
        """Commit what is queued, then close the file."""
        self._file.close()

    # -- internals -----------------------------------------------------------------------------

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
