"""The SQLite backend of the result store (`blipq.gateway.store`): one file (WAL) of one gateway's own, and the
embedded mode's default, which needs nothing else installed or running.

Writes go through `SqliteFile`'s writer thread, grouped into one commit; a coroutine that writes waits for
its commit without holding the event loop or a thread. Reads run on the loop's worker threads, over pooled
connections that never wait for the writer. A write is handed to the writer when the coroutine first runs,
so coroutines started in some order (an attempt, then the job's outcome) are committed in that order."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import anyio.to_thread

from blipq.contract.errors import IdempotencyConflict, JobNotFound, StoreUnavailable
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, Job, JobStatus
from blipq.gateway.sqlite_file import SqliteFile
from blipq.gateway.store import FinishedElsewhere, PendingLimit, StoredRequest, UnfinishedJob, job_not_found
from blipq.gateway.store_outcomes import PENDING_COUNT, UNFINISHED, Recorded, outcome_rows, record_outcomes
from blipq.gateway.store_rows import IMAGE_COLUMNS, JOB_COLUMNS, jobs_from_rows, request_from_rows
from blipq.gateway.store_schema import prepare_schema

T = TypeVar("T")


class SqliteStore:
    """One process opens a store file: each gateway has its own."""

    shared_id: str | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path, prepare_schema)

    @classmethod
    def of(cls, url: str) -> SqliteStore:
        """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.scheme != "sqlite" or not path:
            raise StoreUnavailable(f"unsupported store URL {url!r}; use sqlite:///./data/blipq.db")
        return cls(Path(path))

    async def start(self, finished_elsewhere: FinishedElsewhere) -> None:
        """Nothing to watch: only this gateway writes its file."""

    # -- writing -------------------------------------------------------------------------------

    async def create(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        *,
        owner: str | None = None,
        idempotency: Idempotency | None = None,
        keep_images: bool = True,
        max_pending: int = 0,
        job_id: str | None = None,
    ) -> tuple[str, bool]:
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
                (depth,) = db.execute(PENDING_COUNT).fetchone()
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

        return await self._write(create)

    async def published(self, job_id: str, *, keep_images: bool) -> None:
        def published(db: sqlite3.Connection) -> None:
            db.execute("UPDATE jobs SET published = 1 WHERE id = ?", (job_id,))
            if not keep_images:
                db.execute("DELETE FROM job_blobs WHERE job_id = ?", (job_id,))

        await self._write(published)

    async def discard(self, job_id: str) -> None:
        def discard(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM job_blobs WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job_images WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

        await self._write(discard)

    async def started(self, job_id: str) -> None:
        def started(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempts = attempts + 1 "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )
            db.execute("UPDATE job_images SET state = 'running' WHERE job_id = ? AND state = 'queued'", (job_id,))

        await self._write(started)

    async def requeued(self, job_id: str) -> None:
        def requeued(db: sqlite3.Connection) -> None:
            db.execute("UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'running'", (job_id,))
            db.execute("UPDATE job_images SET state = 'queued' WHERE job_id = ? AND state = 'running'", (job_id,))

        await self._write(requeued)

    async def finish(
        self, job_id: str, results: Sequence[ImageResult], indices: Sequence[int] | None = None
    ) -> Recorded:
        rows = outcome_rows(results)
        return await self._write(lambda db: record_outcomes(db, job_id, rows, indices))

    async def fail(self, job_id: str, error: ErrorInfo, indices: Sequence[int] | None = None) -> Recorded:
        failed = ("failed", None, error.code, error.message)
        return await self._write(lambda db: record_outcomes(db, job_id, None, indices, failed))

    async def cancel(self, job_id: str) -> Job:
        def cancel(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise job_not_found(job_id)
            if not JobStatus(row[0]).finished:
                db.execute(
                    "UPDATE job_images SET state = 'cancelled' WHERE job_id = ? AND state IN (?, ?)",
                    (job_id, *UNFINISHED),
                )
                db.execute("DELETE FROM job_blobs WHERE job_id = ?", (job_id,))
                db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (time.time(), job_id))

        await self._write(cancel)
        return await self.get(job_id)

    async def purge(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s

        def purge(db: sqlite3.Connection) -> int:
            ids = [(row[0],) for row in db.execute("SELECT id FROM jobs WHERE finished_at < ?", (cutoff,))]
            db.executemany("DELETE FROM job_blobs WHERE job_id = ?", ids)
            db.executemany("DELETE FROM job_images WHERE job_id = ?", ids)
            db.executemany("DELETE FROM jobs WHERE id = ?", ids)
            return len(ids)

        return await self._write(purge)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        jobs = await self._read(lambda db: self._load_jobs(db, "WHERE id = ?", (job_id,)))
        if not jobs:
            raise job_not_found(job_id)
        return jobs[0]

    async def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 100,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        def list_jobs(db: sqlite3.Connection) -> list[Job]:
            clauses: list[str] = []
            params: list[object] = []
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

        return await self._read(list_jobs)

    async def unfinished_jobs(self) -> list[UnfinishedJob]:
        rows = await self._read(
            lambda db: db.execute(
                "SELECT id, attempts, published, NOT EXISTS (SELECT 1 FROM job_images LEFT JOIN job_blobs "
                "USING (job_id, idx) WHERE job_id = jobs.id AND state IN (?, ?) AND url IS NULL AND data IS NULL) "
                "FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                (*UNFINISHED, *UNFINISHED),
            ).fetchall()
        )
        return [
            UnfinishedJob(job_id, attempts, bool(published), bool(kept)) for job_id, attempts, published, kept in rows
        ]

    async def request(self, job_id: str) -> StoredRequest | None:
        def request(db: sqlite3.Connection) -> StoredRequest | None:
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
            return request_from_rows(job_id, job, rows)

        return await self._read(request)

    async def pending_images(self) -> int:
        (count,) = await self._read(lambda db: db.execute(PENDING_COUNT).fetchone())
        return int(count)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._file.close)

    # -- internals -----------------------------------------------------------------------------

    async def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self._file.write(operation))

    async def _read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def read() -> T:
            with self._file.reading() as db:
                return operation(db)

        return await anyio.to_thread.run_sync(read)

    @staticmethod
    def _load_jobs(db: sqlite3.Connection, tail: str, params: Sequence[object]) -> list[Job]:
        rows = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs {tail}", params).fetchall()
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        images = db.execute(
            f"SELECT {IMAGE_COLUMNS} FROM job_images WHERE job_id IN ({marks}) ORDER BY job_id, idx",
            [row[0] for row in rows],
        )
        return jobs_from_rows(rows, images)
