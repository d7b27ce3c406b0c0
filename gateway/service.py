"""What the routes share: submit a job, wait for it, record outcomes. Routes stay thin adapters over this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blipq.contract.errors import BlipqError, QueueFull, QueueUnavailable, StoreUnavailable, Timeout
from blipq.contract.images import ImagePolicy
from blipq.contract.messages import ErrorInfo, ImageInput
from blipq.contract.options import CaptionOptions
from blipq.gateway.broker import Broker, Dispatch, JobStarted, Outcome
from blipq.gateway.jobs import Idempotency, Job, JobStatus
from blipq.gateway.metrics import GatewayMetrics
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import PendingLimit, Store, StoredRequest, UnfinishedJob, job_not_found
from blipq.gateway.waiters import Waiters

if TYPE_CHECKING:
    from blipq.gateway.auth import ApiKeys, Caller, RateLimiter

log = logging.getLogger(__name__)

#: What a 429 for a full queue tells clients to wait: long enough for a batch or two to finish.
QUEUE_FULL_RETRY_AFTER_S = 5
REPUBLISH_RETRY_S = 1.0  # between attempts to publish a job stored but never confirmed


@dataclass
class Service:
    store: Store
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

    async def submit(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        caller: Caller,
        idempotency: Idempotency | None = None,
        *,
        job_id: str | None = None,
    ) -> str:
        """Store a job and hand it to the broker; its id once both hold it (the store's commit and the broker's
        confirm are awaited, never blocking the event loop).

        QueueFull (429) while more than max_queue_depth images wait; a job the broker refuses is removed
        from the store again, so a refused request leaves nothing behind.
        """
        try:
            stored_id, created = await self.store.create(
                images,
                options,
                owner=caller.owner,
                idempotency=idempotency,
                keep_images=True,  # until the broker confirmed it (embedded: until it is answered)
                max_pending=self.settings.max_queue_depth,
                job_id=job_id,
            )
        except PendingLimit as full:
            self.metrics.refused.inc()
            limit = self.settings.max_queue_depth
            raise QueueFull(
                f"the queue holds {full.depth} images and {len(images)} more would pass the max_queue_depth "
                f"limit of {limit}; retry in {QUEUE_FULL_RETRY_AFTER_S} s",
                QUEUE_FULL_RETRY_AFTER_S,
            ) from None
        if not created:  # an Idempotency-Key used again: publish it now if its first publish never got through
            request = await self.store.request(stored_id)
            if request is not None and not request.published:
                await self._publish_stored(request)
            return stored_id
        started = time.monotonic()
        try:
            await self.broker.publish(Dispatch(stored_id, images, options))
        except BlipqError:
            await self.store.discard(stored_id)
            raise
        await self._confirmed(stored_id)
        self.metrics.publish_seconds.observe(time.monotonic() - started)
        self.metrics.jobs.inc()
        self.metrics.images.inc(len(images))
        return stored_id

    async def caption(self, images: Sequence[ImageInput], options: CaptionOptions, caller: Caller) -> Job:
        """Submit a job and wait until it is finished: `Timeout` (504) carrying the job id when it takes too long.

        The waiter is registered before the job exists, so its outcome cannot pass unnoticed, and nothing is
        read from the store until then."""
        job_id = uuid.uuid4().hex
        finished = self.waiters.register(job_id)
        started = time.monotonic()
        timeout_s = self.settings.blocking_timeout_s
        try:
            await self.submit(images, options, caller, job_id=job_id)
            job = await self._wait(job_id, finished, started + timeout_s)
        finally:
            self.waiters.release(job_id)
        self.metrics.waits.observe(time.monotonic() - started)
        if not job.status.finished:
            self.metrics.timeouts.inc()
            raise JobTimeout(job_id, timeout_s)
        return job

    async def _wait(self, job_id: str, finished: asyncio.Event, deadline: float) -> Job:
        """The job once finished, or as it is at the deadline (of `time.monotonic`). A wake-up that finds it
        unfinished (see `Waiters.wake_all`) waits again."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), max(0.0, deadline - time.monotonic()))
            finished.clear()
            job = await self.store.get(job_id)
            if job.status.finished or time.monotonic() >= deadline:
                return job

    async def replay_unfinished(self) -> None:
        """At start-up, for a transport that kept nothing: dispatch every unfinished job again, and fail
        the ones the model started `max_attempts` times already (the process stopped each time). Jobs are read
        from the store one at a time: a long backlog is never in memory at once.

        A job the model had started when the process stopped is a suspect: it may be what stopped it, or it
        may only have shared a batch with that job. Suspects run again one at a time, each waiting for the
        one before to finish, so a poison job's next crash costs an attempt to itself, not to every job
        replayed beside it. The jobs never started follow them."""
        suspects: list[str] = []
        never_started: list[str] = []
        for job in await self._replayable():
            await self.store.requeued(job.job_id)  # shown queued while it waits
            (suspects if job.attempts else never_started).append(job.job_id)
        for job_id in suspects:
            finished = self.waiters.register(job_id)
            try:
                if await self._publish_stored(job_id):
                    await finished.wait()
            finally:
                self.waiters.release(job_id)
        for job_id in never_started:
            await self._publish_stored(job_id)

    async def _replayable(self) -> list[UnfinishedJob]:
        """The unfinished jobs that can run again; the others are failed `worker_lost` here."""
        limit = self.settings.max_attempts
        replayable = []
        for job in await self.store.unfinished_jobs():
            lost = None
            if not job.complete:
                lost = ErrorInfo(
                    "worker_lost", "this job was handed to RabbitMQ, which kept its images; without it, it cannot run"
                )
            elif job.attempts >= limit:
                lost = ErrorInfo("worker_lost", f"the process captioning this job stopped {limit} times; giving up")
            if lost is None:
                replayable.append(job)
            else:
                await self.store.fail(job.job_id, lost)
        return replayable

    async def publish_unconfirmed(self) -> None:
        """At start-up, for a transport that keeps requests itself (RabbitMQ): publish the jobs stored but never
        confirmed (this gateway stopped between the two), retrying until the broker takes each. A job that did
        reach the queue runs at most twice; the first outcome is kept."""
        for job in await self.store.unfinished_jobs():
            if job.published:
                continue
            while True:
                try:
                    await self._publish_stored(job.job_id)
                    break
                except (QueueUnavailable, QueueFull, StoreUnavailable) as exc:
                    log.info("job %s not published yet (%s); retrying", job.job_id, exc.message)
                    await asyncio.sleep(REPUBLISH_RETRY_S)

    async def _publish_stored(self, job: str | StoredRequest) -> bool:
        """Publish a stored job (read now, when given by id); False when there is nothing to publish: it is
        finished or cancelled by now, or was accepted without keeping its bytes."""
        request = await self.store.request(job) if isinstance(job, str) else job
        if request is None or request.images is None:
            return False
        await self.broker.publish(Dispatch(request.job_id, request.images, request.options, request.indices))
        await self._confirmed(request.job_id)
        return True

    async def _confirmed(self, job_id: str) -> None:
        """The broker has the job: over RabbitMQ, which keeps it until it is answered, the stored bytes go."""
        await self.store.published(job_id, keep_images=self.broker.replays_unfinished)

    # -- outcomes in ---------------------------------------------------------------------------

    async def record(self, outcome: Outcome) -> None:
        """Called by the broker for each outcome, maybe more than once (at-least-once delivery): the first outcome
        of each image wins. Returns once the outcome is stored (StoreUnavailable when it could not be); the
        requests waiting for the job are woken once it is finished (every part of a split job answered)."""
        try:
            if isinstance(outcome, JobStarted):
                await self.store.started(outcome.job_id)
                return
            if outcome.error is not None:
                self.metrics.job_errors.labels(code=outcome.error.code).inc()
                recorded = await self.store.fail(outcome.job_id, outcome.error, outcome.indices)
            else:
                recorded = await self.store.finish(outcome.job_id, outcome.results, outcome.indices)
        except StoreUnavailable as exc:
            log.warning("outcome of job %s not stored: %s", outcome.job_id, exc.message)
            raise
        self.metrics.outcomes.labels(first=str(recorded.new).lower()).inc()
        if recorded.finished:
            self.waiters.finished(outcome.job_id)

    def finished_elsewhere(self, job_id: str | None) -> None:
        """A shared store's notice: another gateway finished the job (None: any job may have finished)."""
        if job_id is None:
            self.waiters.wake_all()
        else:
            self.waiters.finished(job_id)

    # -- jobs out ------------------------------------------------------------------------------

    async def job(self, job_id: str, caller: Caller) -> Job:
        """A job the caller may see: with API keys on, another key's job does not exist for it (404)."""
        job = await self.store.get(job_id)
        if caller.owner is not None and job.owner != caller.owner:
            raise job_not_found(job_id)
        return job

    async def cancel(self, job_id: str, caller: Caller) -> Job:
        """Best effort: the job is marked cancelled at once and a late outcome is ignored."""
        await self.job(job_id, caller)
        job = await self.store.cancel(job_id)
        self.waiters.finished(job_id)
        return job

    async def list_jobs(
        self, caller: Caller, *, statuses: Sequence[JobStatus] | None, limit: int, after: str | None
    ) -> list[Job]:
        return await self.store.list_jobs(statuses=statuses, limit=limit, after=after, owner=caller.owner)


class JobTimeout(Timeout):
    def __init__(self, job_id: str, waited_s: float) -> None:
        super().__init__(f"job {job_id} is not finished after {waited_s:g} s; poll GET /v1/jobs/{job_id}")
        self.job_id = job_id
