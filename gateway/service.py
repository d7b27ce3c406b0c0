"""What the routes share: submit a job, wait for it, record outcomes. Routes stay thin adapters over this."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio.from_thread

from blipq.contract.errors import BlipqError, QueueFull, Timeout
from blipq.contract.images import ImagePolicy
from blipq.contract.messages import ErrorInfo, ImageInput
from blipq.contract.options import CaptionOptions
from blipq.gateway.broker import Broker, Dispatch, JobStarted, Outcome
from blipq.gateway.jobs import Idempotency, Job, JobStatus
from blipq.gateway.metrics import GatewayMetrics
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import JobStore, job_not_found
from blipq.gateway.waiters import Waiters

if TYPE_CHECKING:
    from blipq.gateway.auth import ApiKeys, Caller, RateLimiter

#: What a 429 for a full queue tells clients to wait: long enough for a batch or two to finish.
QUEUE_FULL_RETRY_AFTER_S = 5


@dataclass
class Service:
    store: JobStore
    broker: Broker
    settings: GatewaySettings
    metrics: GatewayMetrics
    keys: ApiKeys | None = None
    rate_limiter: RateLimiter | None = None
    waiters: Waiters = field(default_factory=Waiters)
    image_policy: ImagePolicy = field(init=False)

    def __post_init__(self) -> None:
        self.image_policy = ImagePolicy.of(self.settings)

    # -- jobs in -------------------------------------------------------------------------------

    def submit(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        caller: Caller,
        idempotency: Idempotency | None = None,
    ) -> str:
        """Store a job and hand it to the broker (from a request thread); its id once both hold it.

        QueueFull (429) while more than max_queue_depth images wait; a job the broker refuses is removed
        from the store again, so a refused request leaves nothing behind.
        """
        self._check_depth(len(images))
        job_id, created = self.store.create(images, options, owner=caller.owner, idempotency=idempotency)
        if not created:
            return job_id
        started = time.monotonic()
        try:
            anyio.from_thread.run(self.broker.publish, Dispatch(job_id, images, options))
        except BlipqError:
            self.store.discard(job_id)
            raise
        self.metrics.publish_seconds.observe(time.monotonic() - started)
        self.metrics.jobs.inc()
        self.metrics.images.inc(len(images))
        return job_id

    async def replay_unfinished(self) -> None:
        """At start-up, for a transport that kept nothing: dispatch every unfinished job again, and fail
        the ones the model started `max_attempts` times already (the process stopped each time)."""
        limit = self.settings.max_attempts
        for request in self.store.unfinished():
            if request.attempts >= limit:
                lost = ErrorInfo("worker_lost", f"the process captioning this job stopped {limit} times; giving up")
                self.store.fail(request.job_id, lost)
                continue
            self.store.requeued(request.job_id)
            await self.broker.publish(Dispatch(request.job_id, request.images, request.options))

    def _check_depth(self, adding: int) -> None:
        limit = self.settings.max_queue_depth
        if not limit:
            return
        depth = self.store.pending_images()
        if depth and depth + adding > limit:
            self.metrics.refused.inc()
            raise QueueFull(
                f"the queue holds {depth} images and {adding} more would pass the max_queue_depth "
                f"limit of {limit}; retry in {QUEUE_FULL_RETRY_AFTER_S} s",
                QUEUE_FULL_RETRY_AFTER_S,
            )

    # -- outcomes in ---------------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """Called by the broker for each outcome (any thread). The first outcome of a job wins."""
        if isinstance(outcome, JobStarted):
            self.store.started(outcome.job_id)
            return
        if outcome.error is not None:
            self.metrics.job_errors.labels(code=outcome.error.code).inc()
            first = self.store.fail(outcome.job_id, outcome.error)
        else:
            first = self.store.finish(outcome.job_id, outcome.results)
        self.metrics.outcomes.labels(first=str(first).lower()).inc()
        self.waiters.finished(outcome.job_id)

    # -- jobs out ------------------------------------------------------------------------------

    def job(self, job_id: str, caller: Caller) -> Job:
        """A job the caller may see: with API keys on, another key's job does not exist for it (404)."""
        job = self.store.get(job_id)
        if caller.owner is not None and job.owner != caller.owner:
            raise job_not_found(job_id)
        return job

    def cancel(self, job_id: str, caller: Caller) -> Job:
        """Best effort: the job is marked cancelled at once and a late outcome is ignored."""
        self.job(job_id, caller)
        job = self.store.cancel(job_id)
        self.waiters.finished(job_id)
        return job

    def list_jobs(
        self, caller: Caller, *, statuses: Sequence[JobStatus] | None, limit: int, after: str | None
    ) -> list[Job]:
        return self.store.list_jobs(statuses=statuses, limit=limit, after=after, owner=caller.owner)

    def wait(self, job_id: str) -> Job:
        """Wait for a job to finish; `Timeout` (504) carrying the job id when it takes too long."""
        started = time.monotonic()
        timeout_s = self.settings.blocking_timeout_s
        finished = self.waiters.register(job_id)
        try:
            job = self.store.get(job_id)  # after registering, so an outcome in between is not missed
            if not job.status.finished:
                with contextlib.suppress(FutureTimeout):
                    finished.result(timeout_s)
                job = self.store.get(job_id)
        finally:
            self.waiters.release(job_id)
        self.metrics.waits.observe(time.monotonic() - started)
        if not job.status.finished:
            self.metrics.timeouts.inc()
            raise JobTimeout(job_id, timeout_s)
        return job


class JobTimeout(Timeout):
    def __init__(self, job_id: str, waited_s: float) -> None:
        super().__init__(f"job {job_id} is not finished after {waited_s:g} s; poll GET /v1/jobs/{job_id}")
        self.job_id = job_id
