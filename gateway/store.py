"""The result store as a contract: jobs, per-image outcomes, idempotency keys and, until a job is answered (or
its broker confirmed it), its request. Two backends keep it: SQLite (`blipq.gateway.sqlite_store`), a file of
one gateway's own and the embedded default, and PostgreSQL (`blipq.gateway.pg_store`), which several gateways
share. Both pass the same behaviour suite (tests/gateway/test_store.py).

Every method is a coroutine that never blocks the event loop: SQLite's work runs on its own threads,
PostgreSQL's over asynchronous connections. Outcomes and creations may be called concurrently: the first
outcome of each image wins, and one Idempotency-Key of one owner makes one job, whichever gateway wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from blipq.contract.errors import JobNotFound, StoreUnavailable
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, Job, JobStatus
from blipq.gateway.store_outcomes import Recorded

#: Called on the event loop with the id of a job another gateway finished (a shared store), or with None when
#: any job may have finished unannounced (the store's notices were cut off for a while).
FinishedElsewhere = Callable[[str | None], None]


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


class PendingLimit(Exception):
    """A job refused because too many images wait already (`create`'s max_pending)."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} images wait")
        self.depth = depth


def job_not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job with id {job_id!r} (it may have been purged after the retention period)")


class Store(Protocol):
    #: None for a store of this gateway's own; for a store several gateways share, an id it keeps for as long
    #: as it exists (they consume one reply queue named after it, so no reply waits for a gateway that is gone).
    shared_id: str | None

    async def start(self, finished_elsewhere: FinishedElsewhere) -> None:
        """Begin telling this gateway of the jobs other gateways finish (a shared store; others never call it)."""
        ...

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
        """Store a job: its id and whether it is new.

        With `idempotency`, a key this owner already used returns that job's id (not new) when the
        fingerprint matches and raises IdempotencyConflict when it does not. `keep_images=False`: the
        image bytes are not stored (a transport that keeps the request until it is answered has them).
        `max_pending`: PendingLimit instead, when more images than that would wait (0: no limit).
        `job_id`: the new job's id (default: a random one).
        """
        ...

    async def published(self, job_id: str, *, keep_images: bool) -> None:
        """The broker confirmed the job's message. `keep_images=False`: the broker keeps the request until it is
        answered, so its bytes are needed here no more."""
        ...

    async def discard(self, job_id: str) -> None:
        """Forget a job the broker refused: it was never accepted."""
        ...

    async def started(self, job_id: str) -> None:
        """The model started on the job: one more attempt (a job that stops the process each time runs out)."""
        ...

    async def requeued(self, job_id: str) -> None:
        """Dispatched again after a restart: waiting, not running, until the model starts on it again."""
        ...

    async def finish(
        self, job_id: str, results: Sequence[ImageResult], indices: Sequence[int] | None = None
    ) -> Recorded:
        """Record the results of the images that were dispatched: those at `indices` (one part of a split job),
        else every image of the job, or (for a job that already had some outcomes, carried over from an earlier
        store) the ones still pending, in order. The first outcome of each image wins; the job is finished once
        every image has one. Nothing changes (`new` False) for a job finished, cancelled or unknown (purged)."""
        ...

    async def fail(self, job_id: str, error: ErrorInfo, indices: Sequence[int] | None = None) -> Recorded:
        """Fail the pending images (those at `indices`, else all) that could not be run at all."""
        ...

    async def cancel(self, job_id: str) -> Job:
        """Cancel the images without an outcome; a finished job is returned unchanged. JobNotFound if unknown."""
        ...

    async def purge(self, older_than_s: float) -> int:
        """Delete the jobs finished longer ago than that: how many (0 while another gateway purges)."""
        ...

    async def get(self, job_id: str) -> Job: ...

    async def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 100,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Jobs oldest first, optionally only those in `statuses` or created by `owner`, after the job `after`."""
        ...

    async def unfinished_jobs(self) -> list[UnfinishedJob]:
        """Every job accepted and not finished, oldest first, without its images (read one at a time with
        `request`, so that a long backlog never sits in memory at once)."""
        ...

    async def request(self, job_id: str) -> StoredRequest | None:
        """An unfinished job as it was accepted, its images without an outcome yet; None when it is finished,
        cancelled or unknown."""
        ...

    async def pending_images(self) -> int:
        """Images of unfinished jobs: queued or being captioned."""
        ...

    async def close(self) -> None:
        """Commit what is under way, then let go of the files or connections."""
        ...


def open_store(url: str) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or `postgresql://user:password@host:5432/db`."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from blipq.gateway.sqlite_store import SqliteStore

        return SqliteStore.of(url)
    if scheme in ("postgresql", "postgres"):
        from blipq.gateway.pg_store import PostgresStore  # only a gateway on PostgreSQL needs psycopg

        return PostgresStore(url)
    raise StoreUnavailable(
        f"unsupported store URL {url!r}; use sqlite:///./data/blipq.db or postgresql://user:password@host/db"
    )
