"""The PostgreSQL backend of the result store (`blipq.gateway.store`): one database that several gateways share,
so that each answers for every job, whichever gateway took it or recorded its outcome.

Each operation is one transaction on a connection from an asynchronous pool (psycopg 3). What must not
interleave across gateways is serialised by PostgreSQL itself: an outcome locks its job's row (`FOR UPDATE`),
so the parts of a split job recorded by two gateways at once still give each image its first outcome and
finish the job once; one owner's Idempotency-Key is a unique index, so two gateways given the same key at once
make one job; the retention purge runs under an advisory lock that one gateway at a time takes.

A job finished (or cancelled) sends a notice at commit; every gateway listens on a connection of its own and
wakes its requests waiting for that job (`blipq.gateway.pg_notices`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, LiteralString

import psycopg
import psycopg_pool
from psycopg import sql

from blipq.contract.errors import IdempotencyConflict, JobNotFound, StoreUnavailable
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, Job, JobStatus
from blipq.gateway.pg_notices import CONNECT_TIMEOUT_S, FINISHED_CHANNEL, listen_for_finished_jobs
from blipq.gateway.pg_schema import prepare_schema
from blipq.gateway.pg_statements import FINISH, IMAGES_FOR_OUTCOMES, SET_OUTCOMES
from blipq.gateway.store import FinishedElsewhere, PendingLimit, StoredRequest, UnfinishedJob, job_not_found
from blipq.gateway.store_outcomes import PENDING_COUNT, UNFINISHED, OutcomeRow, Recorded, outcome_rows, plan_outcomes
from blipq.gateway.store_rows import IMAGE_COLUMNS, JOB_COLUMNS, jobs_from_rows, request_from_rows

log = logging.getLogger(__name__)

#: Connections each gateway keeps to the store, at most: its concurrent store operations (a job's creation,
#: outcomes, reads); more wait for one to come free.
POOL_SIZE = 16
#: How long an operation waits for a free connection (or a new one) before the request gets 503.
POOL_WAIT_S = 5.0

#: The advisory lock a gateway holds while it purges (any fixed number; "purge" in ASCII).
PURGE_LOCK = 0x7075726765

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.shared_id: str | None = None  # read from the store at `start`
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            timeout=POOL_WAIT_S,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True},
        )
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({psycopg.conninfo.conninfo_to_dict(self.url).get('dbname')!r})"

    async def start(self, finished_elsewhere: FinishedElsewhere) -> None:
        """Connect, create or migrate the tables, and listen for the jobs other gateways finish. StoreUnavailable
        when the database does not answer within CONNECT_TIMEOUT_S."""
        try:
            # A connection of its own first: a wrong host, password or database name is said as PostgreSQL
            # says it (the pool would only report that it found no connection in time).
            async with await psycopg.AsyncConnection.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S) as db:
                self.shared_id = await prepare_schema(db)
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await self._pool.close()
            raise StoreUnavailable(f"cannot open the store {self!r}: {str(exc).strip()}") from None
        self._listener = await listen_for_finished_jobs(self.url, finished_elsewhere)

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
        async with self._transaction() as db:
            if idempotency is not None and (known := await self._idempotent(db, owner, idempotency)) is not None:
                return known, False
            if max_pending:
                depth = await self._value(db, PENDING_COUNT)
                if depth and depth + len(images) > max_pending:
                    raise PendingLimit(depth)
            new_id = job_id or uuid.uuid4().hex
            inserted = await self._row(
                db,
                "INSERT INTO jobs (id, status, options, n_images, created_at, owner, idem_key, idem_fingerprint) "
                "VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
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
            if inserted is None:
                # Another gateway stored a job with this key since the check above (its insert made this one wait
                # for its commit): that job is the one.
                if idempotency is not None and (known := await self._idempotent(db, owner, idempotency)) is not None:
                    return known, False
                raise StoreUnavailable(f"a job with id {new_id!r} exists already")
            async with db.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO job_images (job_id, idx, url, state) VALUES (%s, %s, %s, 'queued')",
                    [(new_id, index, image.url) for index, image in enumerate(images)],
                )
                blobs = [(new_id, index, image.data) for index, image in enumerate(images) if image.data is not None]
                if keep_images and blobs:
                    await cursor.executemany("INSERT INTO job_blobs (job_id, idx, data) VALUES (%s, %s, %s)", blobs)
            return new_id, True

    async def published(self, job_id: str, *, keep_images: bool) -> None:
        async with self._connection() as db:
            if keep_images:
                await db.execute("UPDATE jobs SET published = TRUE WHERE id = %s", (job_id,))
            else:  # one statement, so one round trip and an implicit transaction
                await db.execute(
                    "WITH gone AS (DELETE FROM job_blobs WHERE job_id = %s) "
                    "UPDATE jobs SET published = TRUE WHERE id = %s",
                    (job_id, job_id),
                )

    async def discard(self, job_id: str) -> None:
        async with self._transaction() as db:
            await self._delete(db, [job_id])

    async def started(self, job_id: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, %s), attempts = attempts + 1 "
                "WHERE id = %s AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )
            await db.execute(
                "UPDATE job_images SET state = 'running' WHERE job_id = %s AND state = 'queued'", (job_id,)
            )

    async def requeued(self, job_id: str) -> None:
        async with self._transaction() as db:
            await db.execute("UPDATE jobs SET status = 'queued' WHERE id = %s AND status = 'running'", (job_id,))
            await db.execute(
                "UPDATE job_images SET state = 'queued' WHERE job_id = %s AND state = 'running'", (job_id,)
            )

    async def finish(
        self, job_id: str, results: Sequence[ImageResult], indices: Sequence[int] | None = None
    ) -> Recorded:
        return await self._record(job_id, outcome_rows(results), indices)

    async def fail(self, job_id: str, error: ErrorInfo, indices: Sequence[int] | None = None) -> Recorded:
        return await self._record(job_id, None, indices, ("failed", None, error.code, error.message))

    async def cancel(self, job_id: str) -> Job:
        async with self._transaction() as db:
            status = await self._row(db, "SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            if status is None:
                raise job_not_found(job_id)
            if not JobStatus(status[0]).finished:
                await db.execute(
                    "UPDATE job_images SET state = 'cancelled' WHERE job_id = %s AND state IN (%s, %s)",
                    (job_id, *UNFINISHED),
                )
                await db.execute("DELETE FROM job_blobs WHERE job_id = %s", (job_id,))
                await db.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = %s WHERE id = %s", (time.time(), job_id)
                )
                await db.execute("SELECT pg_notify(%s, %s)", (FINISHED_CHANNEL, job_id))
            return (await self._load_jobs(db, "WHERE id = %s", (job_id,)))[0]

    async def purge(self, older_than_s: float) -> int:
        async with self._transaction() as db:
            if not await self._value(db, "SELECT pg_try_advisory_xact_lock(%s)", (PURGE_LOCK,)):
                return 0  # another gateway is purging
            async with db.cursor() as cursor:
                await cursor.execute("SELECT id FROM jobs WHERE finished_at < %s", (time.time() - older_than_s,))
                ids = [job_id for (job_id,) in await cursor.fetchall()]
            await self._delete(db, ids)
            return len(ids)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        async with self._connection() as db:
            jobs = await self._load_jobs(db, "WHERE id = %s", (job_id,))
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
        clauses: list[LiteralString] = []
        params: list[object] = []
        async with self._transaction() as db:
            if after is not None:
                # Another owner's job is no cursor: that would tell whether its id exists.
                row = await self._row(
                    db,
                    "SELECT seq FROM jobs WHERE id = %s AND (%s::text IS NULL OR owner = %s)",
                    (after, owner, owner),
                )
                if row is None:
                    raise JobNotFound(f"cursor {after!r} is not a known job id")
                clauses.append("seq > %s")
                params.append(row[0])
            if owner is not None:
                clauses.append("owner = %s")
                params.append(owner)
            if statuses is not None:
                clauses.append("status = ANY(%s)")
                params.append([status.value for status in statuses])
            where: LiteralString = "WHERE " + " AND ".join(clauses) if clauses else ""
            return await self._load_jobs(db, where + " ORDER BY seq LIMIT %s", (*params, limit))

    async def unfinished_jobs(self) -> list[UnfinishedJob]:
        async with self._transaction() as db, db.cursor() as cursor:
            await cursor.execute(
                "SELECT id, attempts, published, NOT EXISTS (SELECT 1 FROM job_images LEFT JOIN job_blobs "
                "USING (job_id, idx) WHERE job_id = jobs.id AND state IN (%s, %s) AND url IS NULL AND data IS NULL) "
                "FROM jobs WHERE status IN (%s, %s) ORDER BY seq",
                (*UNFINISHED, *UNFINISHED),
            )
            rows = await cursor.fetchall()
        return [UnfinishedJob(job_id, attempts, published, kept) for job_id, attempts, published, kept in rows]

    async def request(self, job_id: str) -> StoredRequest | None:
        async with self._transaction() as db:
            job = await self._row(
                db,
                "SELECT options, attempts, published FROM jobs WHERE id = %s AND status IN (%s, %s)",
                (job_id, *UNFINISHED),
            )
            if job is None:
                return None
            async with db.cursor() as cursor:
                await cursor.execute(
                    "SELECT idx, data, url FROM job_images LEFT JOIN job_blobs USING (job_id, idx) "
                    "WHERE job_id = %s AND state IN (%s, %s) ORDER BY idx",
                    (job_id, *UNFINISHED),
                )
                rows = await cursor.fetchall()
        return request_from_rows(job_id, job, rows)

    async def pending_images(self) -> int:
        async with self._connection() as db:
            return int(await self._value(db, PENDING_COUNT))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._pool.close()

    # -- internals -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit: each statement its own transaction (one round trip, no BEGIN or
        COMMIT of its own). The database's errors, and no free connection in time, are StoreUnavailable (503)."""
        try:
            async with self._pool.connection() as db:
                yield db
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailable(f"store error in {self!r}: {type(exc).__name__}: {exc}") from None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction, committed when the block ends (rolled back on an exception)."""
        async with self._connection() as db, db.transaction():
            yield db

    async def _record(
        self, job_id: str, rows: Sequence[OutcomeRow] | None, indices: Sequence[int] | None, every_one: OutcomeRow = ()
    ) -> Recorded:
        """`plan_outcomes` with the job's row locked: outcomes of one job recorded by several gateways at once
        take their turns, each seeing what the one before committed."""
        async with self._transaction() as db:
            job = await self._row(db, "SELECT status, n_images FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            pending, captioned = await self._row(db, IMAGES_FOR_OUTCOMES, (job_id, job_id)) or ([], False)
            plan = plan_outcomes(job_id, None if job is None else (job[0], job[1]), pending, rows, indices, every_one)
            if isinstance(plan, Recorded):
                return plan
            states, captions, codes, messages, targets = (list(column) for column in zip(*plan.updates, strict=True))
            await db.execute(SET_OUTCOMES, (states, captions, codes, messages, targets, job_id))
            now = time.time()
            if not plan.finishes:  # a part of the job is done: the rest is under way
                await db.execute(
                    "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, %s) WHERE id = %s",
                    (now, job_id),
                )
                return Recorded(new=True, finished=False)
            succeeded = captioned or "done" in states  # an image captioned before, or now
            status_now = (JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED).value
            await db.execute(FINISH, (job_id, status_now, now, now, job_id, FINISHED_CHANNEL, job_id))
            return Recorded(new=True, finished=True)

    async def _idempotent(self, db: Connection, owner: str | None, idempotency: Idempotency) -> str | None:
        """The job this owner made with this key, if any; IdempotencyConflict when its body differed."""
        row = await self._row(
            db,
            "SELECT id, idem_fingerprint FROM jobs WHERE COALESCE(owner, '') = %s AND idem_key = %s",
            (owner or "", idempotency.key),
        )
        if row is None:
            return None
        if row[1] != idempotency.fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key {idempotency.key!r} was already used for job {row[0]} with a different request body"
            )
        return str(row[0])

    @staticmethod
    async def _delete(db: Connection, ids: list[str]) -> None:
        for table, column in (("job_blobs", "job_id"), ("job_images", "job_id"), ("jobs", "id")):
            await db.execute(
                sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(sql.Identifier(table), sql.Identifier(column)),
                (ids,),
            )

    @staticmethod
    async def _row(db: Connection, query: LiteralString, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        async with db.cursor() as cursor:
            await cursor.execute(query, params)
            return await cursor.fetchone()

    @classmethod
    async def _value(cls, db: Connection, query: LiteralString, params: Sequence[object] = ()) -> Any:
        row = await cls._row(db, query, params)
        assert row is not None, "an aggregate always has a row"
        return row[0]

    @staticmethod
    async def _load_jobs(db: Connection, tail: LiteralString, params: Sequence[object]) -> list[Job]:
        async with db.cursor() as cursor:
            await cursor.execute("SELECT " + JOB_COLUMNS + " FROM jobs " + tail, params)
            rows = await cursor.fetchall()
            if not rows:
                return []
            await cursor.execute(
                "SELECT " + IMAGE_COLUMNS + " FROM job_images WHERE job_id = ANY(%s) ORDER BY job_id, idx",
                ([row[0] for row in rows],),
            )
            return jobs_from_rows(rows, await cursor.fetchall())
