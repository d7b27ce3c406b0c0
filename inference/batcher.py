"""The batcher: jobs in from any transport, one outcome per job out, images batched across jobs.

Three kinds of threads cooperate:
- the feeder fills each batch with images of many jobs that share options (waiting up to
  `batch_wait_ms` for more), oldest job first; a job with more images than a batch spans batches.
  It starts fetching and decoding a batch's images on a thread pool and hands the batch over
  through a one-slot queue, so the next batch is decoded while the model runs;
- the model loop captions handed-over batches and, when a job's last image is done, calls
  `on_done` with its results in order;
- the decode pool.
One bad image fails only itself: `CaptionEngine.generate_each` splits a batch the model fails on
until the failing image is isolated (this is also how a CUDA out-of-memory error is absorbed).
`stop` finishes every job already started and hands back the ones never started.
"""

from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blipq.contract.errors import BlipqError, ModelUnavailable
from blipq.contract.images import ImagePolicy
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.inference.captioning import caption_prepared
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from blipq.inference.fetch import FetchPolicy, fetch_url
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.settings import InferenceSettings

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One job (or one message): `key` names it in callbacks and logs."""

    key: str
    images: Sequence[ImageInput]
    options: CaptionOptions


@dataclass(frozen=True)
class BatcherConfig:
    max_batch: int = 16
    batch_wait_ms: int = 10
    decode_threads: int = 4
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    policy: ImagePolicy = field(default_factory=ImagePolicy)

    @classmethod
    def of(cls, settings: InferenceSettings) -> BatcherConfig:
        """URL inputs come from strangers here: only public addresses (and the allowed networks) are fetched."""
        return cls(
            max_batch=settings.max_batch,
            batch_wait_ms=settings.batch_wait_ms,
            decode_threads=settings.decode_threads,
            fetch=FetchPolicy(
                timeout_s=settings.fetch_timeout_s,
                max_bytes=settings.max_fetch_bytes,
                allow_networks=settings.fetch_allow_networks,
            ),
            # URL downloads are already capped by max_fetch_bytes, and the gateway checked uploaded bytes.
            policy=ImagePolicy.of(settings, limit_bytes=False),
        )


@dataclass
class _Progress:
    item: WorkItem
    arrived: float
    results: list[ImageResult | None]
    scheduled: int = 0  # images handed to a batch so far
    remaining: int = 0  # images without a result yet

    def __post_init__(self) -> None:
        self.remaining = len(self.item.images)


@dataclass(frozen=True)
class _Slot:
    job: _Progress
    index: int


@dataclass(frozen=True)
class _Batch:
    slots: list[_Slot]
    prepared: list[Future[Tensor]]
    options: CaptionOptions


class Batcher:
    def __init__(
        self,
        engine: CaptionEngine,
        config: BatcherConfig,
        *,
        on_start: Callable[[WorkItem], None],
        on_done: Callable[[WorkItem, list[ImageResult]], None],
        metrics: InferenceMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics or InferenceMetrics()
        self._on_start = on_start
        self._on_done = on_done
        self._changed = threading.Condition()
        self._waiting: deque[_Progress] = deque()  # jobs with images not yet in a batch, oldest first
        self._stopping = False
        self._handed_back: list[WorkItem] = []
        self._handoff: stdlib_queue.Queue[_Batch | None] = stdlib_queue.Queue(maxsize=1)
        self._pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="blipq-decode")
        self._feeder = threading.Thread(target=self._feed, name="blipq-feeder", daemon=True)
        self._model_loop = threading.Thread(target=self._run_model, name="blipq-model", daemon=True)

    def start(self) -> None:
        self._feeder.start()
        self._model_loop.start()

    def submit(self, item: WorkItem) -> None:
        """Thread-safe; `on_done` is called for the item later (ModelUnavailable once stopping)."""
        with self._changed:
            if self._stopping or not self.alive():
                raise ModelUnavailable("the model is not running (stopping, or its thread died)")
            self._waiting.append(_Progress(item, time.monotonic(), [None] * len(item.images)))
            self._changed.notify_all()

    def alive(self) -> bool:
        return self._feeder.is_alive() and self._model_loop.is_alive()

    def stop(self) -> list[WorkItem]:
        """Finish every job already started, then return the jobs never started."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._feeder.join()
        self._model_loop.join()
        self._pool.shutdown(wait=True)
        return self._handed_back

    # -- feeder --------------------------------------------------------------------------------

    def _feed(self) -> None:
        try:
            while (slots := self._next_batch()) is not None:
                self._start_jobs(slots)
                prepared = [self._pool.submit(self._prepare, slot) for slot in slots]
                self._handoff.put(_Batch(slots, prepared, slots[0].job.item.options))
        except Exception:
            log.exception("the batcher's feeder crashed; the jobs in hand are finished first")
        finally:
            self._handoff.put(None)

    def _next_batch(self) -> list[_Slot] | None:
        """Up to max_batch images sharing the oldest waiting job's options; None when stopped."""
        config = self.config
        with self._changed:
            while not self._waiting or (self._stopping and not self._drop_unstarted()):
                if self._stopping:
                    return None
                self._changed.wait()
            options = self._waiting[0].item.options
            slots = self._take(options, config.max_batch)
            deadline = time.monotonic() + config.batch_wait_ms / 1000
            while len(slots) < config.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
                slots += self._take(options, config.max_batch - len(slots))
            return slots

    def _drop_unstarted(self) -> bool:
        """While stopping: hand back jobs not started; True while a started job still has images to batch."""
        for job in list(self._waiting):
            if job.scheduled == 0:
                self._waiting.remove(job)
                self._handed_back.append(job.item)
        return bool(self._waiting)

    def _take(self, options: CaptionOptions, room: int) -> list[_Slot]:
        slots: list[_Slot] = []
        for job in list(self._waiting):
            if len(slots) == room:
                break
            if job.item.options != options:
                continue
            count = min(room - len(slots), len(job.item.images) - job.scheduled)
            slots += [_Slot(job, index) for index in range(job.scheduled, job.scheduled + count)]
            job.scheduled += count
            if job.scheduled == len(job.item.images):
                self._waiting.remove(job)
        return slots

    def _start_jobs(self, slots: list[_Slot]) -> None:
        now = time.monotonic()
        for slot in slots:
            if slot.index == 0:
                self.metrics.queued_seconds.observe(now - slot.job.arrived)
                self._call(self._on_start, slot.job.item)

    def _prepare(self, slot: _Slot) -> Tensor:
        image = slot.job.item.images[slot.index]
        if image.data is not None:
            data = image.data
        else:
            assert image.url is not None
            data = fetch_url(image.url, self.config.fetch)
        return self.engine.prepare(decode_image(data, self.config.policy))

    # -- model loop ----------------------------------------------------------------------------

    def _run_model(self) -> None:
        while (batch := self._handoff.get()) is not None:
            names = [f"image {slot.index} of {slot.job.item.key}" for slot in batch.slots]
            started = time.perf_counter()
            outcomes = caption_prepared(self.engine, batch.prepared, batch.options, names)
            self.metrics.model_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(batch.slots))
            for slot, outcome in zip(batch.slots, outcomes, strict=True):
                self._record(slot, outcome)

    def _record(self, slot: _Slot, outcome: str | BlipqError) -> None:
        job = slot.job
        if isinstance(outcome, BlipqError):
            self.metrics.failed.labels(code=outcome.code).inc()
            result = ImageResult(error=ErrorInfo(outcome.code, f"image {slot.index}: {outcome.message}"))
        else:
            self.metrics.captioned.inc()
            result = ImageResult(caption=outcome)
        job.results[slot.index] = result
        job.remaining -= 1
        if job.remaining == 0:
            self._call(self._on_done, job.item, [r for r in job.results if r is not None])

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        """A failing callback (the transport's problem) must not stop the model for everyone else."""
        try:
            callback(*args)
        except Exception:
            log.exception("a %s callback failed", getattr(callback, "__name__", "batcher"))
