"""The inference side's Prometheus metrics: what was captioned, in which batches, how long it took."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.captioned = Counter("blipq_images_captioned", "Images captioned.", registry=self.registry)
        self.failed = Counter(
            "blipq_images_failed", "Images that got an error, by code.", ["code"], registry=self.registry
        )
        self.batch_size = Histogram(
            "blipq_batch_size", "Images per model call.", buckets=_BATCH_SIZES, registry=self.registry
        )
        self.model_seconds = Histogram("blipq_model_seconds", "Time per model call.", registry=self.registry)
        self.model_cpu_seconds = Counter(
            "blipq_model_cpu_seconds",
            "CPU time of the thread driving the model (beside a GPU: Python and kernel launches; when it nears the "
            "wall-clock time of the model calls, that thread is what limits the rate).",
            registry=self.registry,
        )
        self.undeliverable_replies = Counter(
            "blipq_undeliverable_replies",
            "Replies the broker would not take (no such reply queue, or the queue refused it), by reason; their "
            "requests are settled all the same.",
            ["reason"],
            registry=self.registry,
        )
        self.queued_seconds = Histogram(
            "blipq_queued_seconds", "Time from a job's arrival to its first image's batch.", registry=self.registry
        )
