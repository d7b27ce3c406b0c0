"""The batcher: jobs in from any transport, one outcome per job out, images batched across jobs.

An image is fetched and decoded as soon as it arrives, on a pool of threads, up to a window of `prefetch`
images ahead of the model (decoding or decoded, not yet captioned). The model takes the oldest decoded
images that share one set of options: with its own search (`--decoder blipq`) they join the searches
already running at the next decoder step, up to max_batch images in flight, and each is answered when its
own caption is done (`blipq.inference.continuous`); with transformers' search, as one batch once the
previous batch is done. When idle and fewer than max_batch are ready, it waits up to batch_wait_ms for more
(decoding, or still to arrive). The model never waits for one image to decode while others are ready.

Three kinds of threads cooperate:
- the feeder hands waiting images to the decode pool while the window has room, oldest job first, and
  calls `on_start` for a job as its first image goes (so a job is started before the model sees it);
- the decode pool, which fetches URL inputs (within the fetch deadline, and at most half of the threads
  on one host at a time) and decodes, within a memory budget (`blipq.inference.decode_budget`); it also
  records images that fail (they never reach the model);
- the model loop, which captions batches. Whichever thread records a job's last result calls `on_done`.
One bad image fails only itself: `CaptionEngine.generate_each` splits a batch the model fails on
until the failing image is isolated (this is also how a CUDA out-of-memory error is absorbed; the running
searches hand their images to it when a step fails).
`stop` finishes every job already started and hands back the ones never started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from blipq.contract.errors import BlipqError, InvalidImage, ModelUnavailable
from blipq.contract.images import ImagePolicy
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.inference.captioning import caption_ready
from blipq.inference.continuous import RunningSearches
from blipq.inference.decode_budget import DecodeBudget, decode_cost
from blipq.inference.engine import CaptionEngine
from blipq.inference.fetch import FetchPolicy, fetch_url
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.settings import InferenceSettings, decode_threads

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
    fast_decode: bool = False  # large JPEGs decoded at a reduced scale (decode_image's reduce_to)
    decode_memory_bytes: int = 2 * 1024 * 1024 * 1024  # what decodes in progress may hold (`DecodeBudget`)

    @property
    def prefetch(self) -> int:
        """Images decoding or decoded ahead of the model: a batch on the model, the next ones ready."""
        return max(2 * self.max_batch, self.decode_threads)

    @classmethod
    def of(cls, settings: InferenceSettings) -> BatcherConfig:
        """URL inputs come from strangers here: only public addresses (and the allowed networks) are fetched."""
        return cls(
            max_batch=settings.max_batch,
            batch_wait_ms=settings.batch_wait_ms,
            decode_threads=decode_threads(settings),
            fetch=FetchPolicy(
                timeout_s=settings.fetch_timeout_s,
                max_bytes=settings.max_fetch_bytes,
                allow_networks=settings.fetch_allow_networks,
            ),
            # URL downloads are already capped by max_fetch_bytes, and the gateway checked uploaded bytes.
            policy=ImagePolicy.of(settings, limit_bytes=False),
            fast_decode=settings.fast_decode,
            decode_memory_bytes=settings.decode_memory_bytes,
        )


@dataclass
class _Progress:
    item: WorkItem
    arrived: float
    results: list[ImageResult | None]
    scheduled: int = 0  # images handed to the decode pool so far
    remaining: int = 0  # images without a result yet

    def __post_init__(self) -> None:
        self.remaining = len(self.item.images)


@dataclass(frozen=True)
class _Slot:
    job: _Progress
    index: int
    order: int  # the order images were handed to decoding: oldest first into batches
    host: str | None = None  # the host it is fetched from (a URL input)


@dataclass(frozen=True)
class _Ready:
    slot: _Slot
    prepared: Tensor
    at: float = field(default_factory=time.monotonic)  # when it was decoded


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
        self._waiting: deque[_Progress] = deque()  # jobs with images not yet handed to decoding, oldest first
        self._decoding = 0
        self._ready: list[_Ready] = []
        self._scheduled = 0  # images handed to decoding so far: their order
        self._fetching: Counter[str] = Counter()  # URL fetches in progress, by host
        self._stopping = False
        self._fed_all = False  # the feeder is done (stopping, nothing started is left to hand over)
        self._handed_back: list[WorkItem] = []
        self._pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="blipq-decode")
        self.decode_budget = DecodeBudget(config.decode_memory_bytes)
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

    def withdraw(self, keys: Sequence[str]) -> list[str]:
        """Take back the jobs among `keys` that have not started (no image handed to decoding): they are never
        run nor reported. The keys withdrawn."""
        wanted = set(keys)
        with self._changed:
            withdrawn = self._remove_unstarted(lambda job: job.item.key in wanted)
        return [job.item.key for job in withdrawn]

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

    # -- feeder and decode pool ----------------------------------------------------------------

    def _feed(self) -> None:
        try:
            while (slot := self._next_image()) is not None:
                if slot.index == 0:
                    self.metrics.queued_seconds.observe(time.monotonic() - slot.job.arrived)
                    self._call(self._on_start, slot.job.item)
                self._pool.submit(self._decode, slot)
        except Exception:
            log.exception("the batcher's feeder crashed; the jobs in hand are finished first")
        finally:
            with self._changed:
                self._fed_all = True
                self._changed.notify_all()

    def _next_image(self) -> _Slot | None:
        """The next image to decode once the window has room; None when stopping and nothing started is left."""
        with self._changed:
            while True:
                if self._stopping:
                    self._hand_back_unstarted()
                    if not self._waiting:
                        return None
                found = self._next_job() if self._decoding + len(self._ready) < self.config.prefetch else None
                if found is not None:
                    job, host = found
                    slot = _Slot(job, job.scheduled, self._scheduled, host)
                    job.scheduled += 1
                    if job.scheduled == len(job.item.images):
                        self._waiting.remove(job)
                    if slot.host is not None:
                        self._fetching[slot.host] += 1
                    self._decoding += 1
                    self._scheduled += 1
                    return slot
                self._changed.wait()

    def _next_job(self) -> tuple[_Progress, str | None] | None:
        """The oldest waiting job whose next image is not a URL on a host already holding its share of the
        decode threads (half of them), with that image's host: a host that answers slowly delays its own
        images, not everyone's."""
        share = max(1, self.config.decode_threads // 2)
        for job in self._waiting:
            host = _host(job.item.images[job.scheduled])
            if host is None or self._fetching[host] < share:
                return job, host
        return None

    def _hand_back_unstarted(self) -> None:
        self._handed_back += [job.item for job in self._remove_unstarted(lambda job: True)]

    def _remove_unstarted(self, chosen: Callable[[_Progress], bool]) -> list[_Progress]:
        """Take the `chosen` waiting jobs that have no image handed to decoding yet out of the queue (under the
        lock)."""
        removed = [job for job in self._waiting if job.scheduled == 0 and chosen(job)]
        for job in removed:
            self._waiting.remove(job)
        return removed

    def _decode(self, slot: _Slot) -> None:
        outcome: Tensor | BlipqError
        try:
            outcome = self._prepare(slot)
        except BlipqError as exc:
            outcome = exc
        except Exception as exc:  # a decoder bug costs this image only
            log.exception("unexpected error preparing image %d of %s", slot.index, slot.job.item.key)
            outcome = InvalidImage(f"could not decode: {type(exc).__name__}: {exc}")
        with self._changed:
            self._decoding -= 1
            if not isinstance(outcome, BlipqError):
                self._ready.append(_Ready(slot, outcome))
            self._changed.notify_all()
        if isinstance(outcome, BlipqError):
            self._record(slot, outcome)

    def _prepare(self, slot: _Slot) -> Tensor:
        image = slot.job.item.images[slot.index]
        if image.data is not None:
            data = image.data
        else:
            assert image.url is not None
            assert slot.host is not None
            try:
                data = fetch_url(image.url, self.config.fetch)
            finally:
                with self._changed:
                    self._fetching[slot.host] -= 1
                    self._changed.notify_all()
        with self.decode_budget.hold(decode_cost(data, self.config.policy)):
            return self.engine.prepare_file(data, self.config.policy, fast_decode=self.config.fast_decode)

    # -- model loop ----------------------------------------------------------------------------

    def _run_model(self) -> None:
        if self.engine.decoder == "blipq":
            self._run_continuously()
            return
        while (batch := self._next_batch(self.config.max_batch, wait=True)) is not None:
            options = batch[0].slot.job.item.options
            started, cpu_started = time.perf_counter(), time.thread_time()
            outcomes = caption_ready(self.engine, [ready.prepared for ready in batch], options, _names(batch))
            self._measure(started, cpu_started, len(batch))
            for ready, outcome in zip(batch, outcomes, strict=True):
                self._record(ready.slot, outcome)

    def _run_continuously(self) -> None:
        """Images join the running searches at every step while fewer than max_batch are in flight; each is
        recorded as soon as its caption is done (`blipq.inference.continuous`)."""
        running: RunningSearches[_Slot] = RunningSearches(self.engine)
        while True:
            room = self.config.max_batch - running.images
            batch = self._next_batch(room, wait=running.images == 0)
            if batch is None:
                return
            started, cpu_started = time.perf_counter(), time.thread_time()
            outcomes = []
            if batch:
                options = batch[0].slot.job.item.options
                prepared, slots = [ready.prepared for ready in batch], [ready.slot for ready in batch]
                outcomes += running.start(prepared, slots, options, _names(batch))
            outcomes += running.step()
            self._measure(started, cpu_started, len(batch) if batch else None)
            for slot, outcome in outcomes:
                self._record(slot, outcome)

    def _measure(self, started: float, cpu_started: float, batch: int | None) -> None:
        self.metrics.model_seconds.observe(time.perf_counter() - started)
        self.metrics.model_cpu_seconds.inc(time.thread_time() - cpu_started)
        if batch is not None:
            self.metrics.batch_size.observe(batch)

    def _next_batch(self, room: int, *, wait: bool) -> list[_Ready] | None:
        """Up to `room` decoded images sharing the oldest one's options. `wait`: block until there are some
        (waiting up to batch_wait_ms for more, up to max_batch); otherwise take what is ready now, if any.
        None once stopped and drained (only when `wait`)."""
        config = self.config
        with self._changed:
            if not wait and not self._worth_a_cohort(room):
                return []
            while not self._ready:
                if self._fed_all and not self._decoding:
                    return None
                self._changed.wait()
            options = min(self._ready, key=lambda ready: ready.slot.order).slot.job.item.options
            deadline = time.monotonic() + config.batch_wait_ms / 1000
            while wait and self._count_ready(options) < room and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            matching = sorted(
                (ready for ready in self._ready if ready.slot.job.item.options == options),
                key=lambda ready: ready.slot.order,
            )[:room]
            taken = {id(ready) for ready in matching}
            self._ready = [ready for ready in self._ready if id(ready) not in taken]
            self._changed.notify_all()  # room in the window: the feeder hands over more
            return matching

    def _worth_a_cohort(self, room: int) -> bool:
        """While searches run, new images join as a cohort of their own, and every cohort costs each step its
        own search bookkeeping and attention calls (measured with the tiny model: cohorts of 3-4 images cost
        the model's thread 19 against 14 ms per image). So a cohort starts only when at least half of
        max_batch is free, and once it fills the room or its oldest image has waited batch_wait_ms."""
        if room < max(1, self.config.max_batch // 2) or not self._ready:
            return False
        oldest = min(self._ready, key=lambda ready: ready.slot.order)
        waited = time.monotonic() - oldest.at >= self.config.batch_wait_ms / 1000
        return waited or self._count_ready(oldest.slot.job.item.options) >= room

    def _count_ready(self, options: CaptionOptions) -> int:
        return sum(1 for ready in self._ready if ready.slot.job.item.options == options)

    def _record(self, slot: _Slot, outcome: str | BlipqError) -> None:
        """From the model loop or a decode thread; `on_done` is called outside the lock."""
        if isinstance(outcome, BlipqError):
            self.metrics.failed.labels(code=outcome.code).inc()
            result = ImageResult(error=ErrorInfo(outcome.code, f"image {slot.index}: {outcome.message}"))
        else:
            self.metrics.captioned.inc()
            result = ImageResult(caption=outcome)
        job = slot.job
        with self._changed:
            job.results[slot.index] = result
            job.remaining -= 1
            finished = job.remaining == 0
        if finished:
            self._call(self._on_done, job.item, [r for r in job.results if r is not None])

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        """A failing callback (the transport's problem) must not stop the model for everyone else."""
        try:
            callback(*args)
        except Exception:
            log.exception("a %s callback failed", getattr(callback, "__name__", "batcher"))


def _names(batch: Sequence[_Ready]) -> list[str]:
    """How the log names each image of a batch."""
    return [f"image {ready.slot.index} of {ready.slot.job.item.key}" for ready in batch]


def _host(image: ImageInput) -> str | None:
    """The host a URL input is fetched from ("" for a URL without one, which fails when fetched)."""
    if image.url is None:
        return None
    try:
        return httpx.URL(image.url).host
    except httpx.InvalidURL:
        return ""
