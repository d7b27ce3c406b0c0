"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
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
        self.outcomes = Counter(
            "blipq_job_outcomes",
            "Outcomes received (one per part of a job), by whether they gave images their first outcome.",
            ["first"],
            registry=self.registry,
        )  # fmt: skip
        self.publish_seconds = Histogram(
            "blipq_publish_seconds",
            "Time for the broker to take a job (over RabbitMQ: until the broker confirmed the publish).",
            registry=self.registry,
        )
        self.job_errors = Counter(
            "blipq_job_errors",
            "Jobs answered with an error as a whole, by code (over RabbitMQ: dead letters, e.g. expired, worker_lost).",
            ["code"],
            registry=self.registry,
        )
        #: Read from the store when /metrics is scraped (NaN while the store is unreadable; /readyz says why).
        self.queue_depth = Gauge("blipq_queue_depth", "Images queued or being captioned.", registry=self.registry)
