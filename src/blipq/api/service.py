"""What the routes share: submit a job, wait for it, count it. Routes stay thin adapters over this."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from blipq.config import Settings
from blipq.errors import BlipqError, QueueFull, Timeout
from blipq.images import ImagePolicy
from blipq.jobs import CaptionOptions, ImageInput, Job, JobStatus
from blipq.queue import JobQueue
from blipq.queue.base import Idempotency, job_not_found

if TYPE_CHECKING:
    from blipq.api.auth import ApiKeys, Caller, RateLimiter

#: What a 429 for a full queue tells clients to wait: long enough for a batch or two to finish.
QUEUE_FULL_RETRY_AFTER_S = 5


class Metrics:
    def __init__(self, queue: JobQueue) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("blipq_jobs_created", "Jobs accepted.", registry=self.registry)
        self.images = Counter("blipq_images_enqueued", "Images accepted.", registry=self.registry)
        self.waits = Histogram(
            "blipq_blocking_wait_seconds", "Time blocking requests waited for their job.", registry=self.registry
        )
        self.timeouts = Counter("blipq_blocking_timeouts", "Blocking requests answered 504.", registry=self.registry)
        self.refused = Counter(
            "blipq_jobs_refused_queue_full", "Jobs answered 429 because the queue was full.", registry=self.registry
        )
        depth = Gauge("blipq_queue_depth", "Images queued or being captioned.", registry=self.registry)

        def current_depth() -> float:
            try:
                return float(queue.depth())
            except BlipqError:
                return math.nan  # the queue is unreachable; /readyz says so

        depth.set_function(current_depth)


@dataclass
class Service:
    queue: JobQueue
    settings: Settings
    metrics: Metrics
    keys: ApiKeys | None = None
    rate_limiter: RateLimiter | None = None
    image_policy: ImagePolicy = field(init=False)

    def __post_init__(self) -> None:
        self.image_policy = ImagePolicy.of(self.settings)

    def submit(
        self,
        images: Sequence[ImageInput],
        options: CaptionOptions,
        caller: Caller,
        idempotency: Idempotency | None = None,
    ) -> str:
        """Queue a job for `caller`, or QueueFull (429) while the queue holds more than max_queue_depth images."""
        limit = self.settings.max_queue_depth
        if limit:
            depth = self.queue.depth()
            if depth and depth + len(images) > limit:
                self.metrics.refused.inc()
                raise QueueFull(
                    f"the queue holds {depth} images and {len(images)} more would pass the max_queue_depth "
                    f"limit of {limit}; retry in {QUEUE_FULL_RETRY_AFTER_S} s",
                    QUEUE_FULL_RETRY_AFTER_S,
                )
        job_id = self.queue.enqueue(images, options, owner=caller.owner, idempotency=idempotency)
        self.metrics.jobs.inc()
        self.metrics.images.inc(len(images))
        return job_id

    def job(self, job_id: str, caller: Caller) -> Job:
        """A job the caller may see: with API keys on, another key's job does not exist for it (404)."""
        job = self.queue.get(job_id)
        if caller.owner is not None and job.owner != caller.owner:
            raise job_not_found(job_id)
        return job

    def cancel(self, job_id: str, caller: Caller) -> Job:
        self.job(job_id, caller)
        return self.queue.cancel(job_id)

    def list_jobs(
        self, caller: Caller, *, statuses: Sequence[JobStatus] | None, limit: int, after: str | None
    ) -> list[Job]:
        return self.queue.list_jobs(statuses=statuses, limit=limit, after=after, owner=caller.owner)

    def wait(self, job_id: str) -> Job:
        """Wait for a job to finish; `Timeout` (504) carrying the job id when it takes too long."""
        started = time.monotonic()
        job = self.queue.wait(job_id, self.settings.blocking_timeout_s)
        self.metrics.waits.observe(time.monotonic() - started)
        if not job.status.finished:
            self.metrics.timeouts.inc()
            raise JobTimeout(job_id, self.settings.blocking_timeout_s)
        return job


class JobTimeout(Timeout):
    def __init__(self, job_id: str, waited_s: float) -> None:
        super().__init__(f"job {job_id} is not finished after {waited_s:g} s; poll GET /v1/jobs/{job_id}")
        self.job_id = job_id
