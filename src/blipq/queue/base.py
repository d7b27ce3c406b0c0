"""The JobQueue protocol: the only state shared between API processes and workers.

Semantics every backend implements (and the shared contract tests check):
- A job of N images is N claimable units; `claim` hands out images of any queued jobs that
  share generation options, each under a lease.
- At-least-once: an image whose lease expires becomes claimable again; after `max_attempts`
  claims it is failed instead of handed out again.
- `complete` and `fail` are idempotent: the first outcome of an image wins, later ones
  change nothing (and return False).
- A job finishes when its last image does; waiters are woken.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from blipq.errors import IdempotencyConflict, JobNotFound
from blipq.jobs import CaptionOptions, ErrorInfo, ImageInput, Job, JobStatus


def job_not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job with id {job_id!r} (it may have been purged after the retention period)")


def idempotency_conflict(key: str, job_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"Idempotency-Key {key!r} was already used for job {job_id} with a different request body"
    )


@dataclass(frozen=True)
class ClaimedImage:
    job_id: str
    index: int
    input: ImageInput
    options: CaptionOptions
    attempt: int  # 1 for the first claim
    token: str  # identifies this lease, for renewals


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key (scoped to the job's owner) and a fingerprint of the request it came with."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    model: str
    device: str
    seen_at: float


class JobQueue(Protocol):
    def enqueue(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        *,
        owner: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> str:
        """Store a job durably and return its id (32 hex characters).

        With `idempotency`, a key this owner already used returns that job's id when the fingerprint
        matches (nothing new is stored) and raises IdempotencyConflict when it does not. The key is
        forgotten when its job is purged.
        """
        ...

    def claim(self, max_images: int, lease_s: float, options: CaptionOptions | None = None) -> list[ClaimedImage]:
        """Lease up to `max_images` claimable images sharing one set of options (`options`, or those of
        the oldest claimable image); [] if none."""
        ...

    def renew(self, claims: Sequence[ClaimedImage], lease_s: float) -> None:
        """Extend the leases of images still held."""
        ...

    def complete(self, claim: ClaimedImage, caption: str) -> bool:
        """Record a caption; False when the image already had an outcome (or was cancelled)."""
        ...

    def fail(self, claim: ClaimedImage, error: ErrorInfo) -> bool:
        """Record a per-image error; False when the image already had an outcome."""
        ...

    def get(self, job_id: str) -> Job:
        """The job's current state; raises JobNotFound."""
        ...

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 100,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Jobs oldest first, optionally only those in `statuses` or created by `owner`, starting after the
        job id `after`."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel the images not yet done; a finished job is returned unchanged."""
        ...

    def wait(self, job_id: str, timeout_s: float) -> Job:
        """Block until the job is finished or `timeout_s` passed; returns the job either way."""
        ...

    def wait_for_work(self, seen: int | None, timeout_s: float) -> int:
        """Block until new work was enqueued since the count `seen` (None: return at once) or the timeout.

        Returns the current count, to pass as `seen` next time. Lets idle workers sleep instead of polling.
        """
        ...

    def depth(self) -> int:
        """Images waiting to be claimed or held under a lease."""
        ...

    def purge(self, older_than_s: float) -> int:
        """Delete jobs finished more than `older_than_s` ago; returns how many."""
        ...

    def heartbeat(self, worker: WorkerInfo) -> None:
        """A worker says it is alive with a loaded model."""
        ...

    def workers(self, max_age_s: float) -> list[WorkerInfo]:
        """Workers seen within `max_age_s`."""
        ...

    def close(self) -> None: ...
