"""What the routes share: submit a job, wait for it, count it. Routes stay thin adapters over this."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from blipq.config import Settings
from blipq.errors import BlipqError, Timeout
from blipq.jobs import CaptionOptions, ImageInput, Job
from blipq.queue import JobQueue


class Metrics:
    def __init__(self, queue: JobQueue) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("blipq_jobs_created", "Jobs accepted.", registry=self.registry)
        self.images = Counter("blipq_images_enqueued", "Images accepted.", registry=self.registry)
        self.waits = Histogram(
            "blipq_blocking_wait_seconds", "Time blocking requests waited for their job.", registry=self.registry
        )
        self.timeouts = Counter("blipq_blocking_timeouts", "Blocking requests answered 504.", registry=self.registry)
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

    def submit(self, images: Sequence[ImageInput], options: CaptionOptions) -> str:
        job_id = self.queue.enqueue(images, options)
        self.metrics.jobs.inc()
        self.metrics.images.inc(len(images))
        return job_id

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
