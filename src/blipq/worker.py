"""The worker: claim images from the queue, decode them on threads, caption them in batches, record outcomes.

Three threads cooperate:
- the feeder claims a batch (waiting up to `batch_wait_ms` to fill it), starts fetching and
  decoding its images on a thread pool, and hands it over through a one-slot queue, so the
  next batch is decoded while the model runs;
- the model loop (the caller's thread) captions handed-over batches and records outcomes;
- the keeper renews the leases of every image held and sends heartbeats.
One bad image fails only itself: `CaptionEngine.generate_each` splits a batch the model fails on
until the failing image is isolated (this is also how a CUDA out-of-memory error is absorbed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as stdlib_queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blipq.errors import BlipqError
from blipq.fetch import FetchPolicy, fetch_url
from blipq.images import ImagePolicy, decode_image
from blipq.jobs import ErrorInfo, ImageInput
from blipq.model.engine import CaptionEngine
from blipq.pipeline import caption_prepared
from blipq.queue import ClaimedImage, JobQueue, WorkerInfo

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    max_batch: int = 16
    batch_wait_ms: int = 10
    lease_s: float = 60.0
    heartbeat_s: float = 2.0
    decode_threads: int = 4
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    policy: ImagePolicy = field(default_factory=ImagePolicy)


class _Backoff:
    """0.5 s, doubling, capped at 10 s."""

    def __init__(self) -> None:
        self._delay = 0.5

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, 10.0)
        return delay

    def reset(self) -> None:
        self._delay = 0.5


@dataclass
class _Batch:
    claims: list[ClaimedImage]
    prepared: list[Future[Tensor]]


class Worker:
    def __init__(self, queue: JobQueue, engine: CaptionEngine, config: WorkerConfig, *, model_name: str) -> None:
        self.queue = queue
        self.engine = engine
        self.config = config
        self.info = WorkerInfo(
            worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            model=model_name,
            device=str(engine.device),
            seen_at=time.time(),
        )
        self._held: dict[tuple[str, int], ClaimedImage] = {}
        self._held_lock = threading.Lock()
        self._handoff: stdlib_queue.Queue[_Batch | None] = stdlib_queue.Queue(maxsize=1)
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set, then finish every image already claimed and return."""
        self._stop = stop
        self._persist(lambda: self.queue.heartbeat(self._beat()), "send a heartbeat")
        pool = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="blipq-decode")
        feeder = threading.Thread(target=self._feed, args=(stop, pool), name="blipq-feeder", daemon=True)
        keeper = threading.Thread(target=self._keep, args=(stop,), name="blipq-keeper", daemon=True)
        feeder.start()
        keeper.start()
        try:
            while (batch := self._handoff.get()) is not None:
                self._caption(batch)
        finally:
            stop.set()
            while feeder.is_alive():  # unblock a feeder waiting to hand over (only after a crash here)
                with contextlib.suppress(stdlib_queue.Empty):
                    self._handoff.get(timeout=0.1)
            pool.shutdown(wait=True)
            keeper.join()

    # -- feeder --------------------------------------------------------------------------------

    def _feed(self, stop: threading.Event, pool: ThreadPoolExecutor) -> None:
        try:
            seen = self.queue.wait_for_work(None, 0)
            backoff = _Backoff()
            while not stop.is_set():
                try:
                    claims = self._claim_batch()
                except BlipqError as exc:
                    delay = backoff.next()
                    log.warning("cannot claim work (%s); retrying in %.1f s", exc.message, delay)
                    stop.wait(delay)
                    continue
                backoff.reset()
                if not claims:
                    seen = self.queue.wait_for_work(seen, 1.0)
                    continue
                with self._held_lock:
                    self._held.update({(c.job_id, c.index): c for c in claims})
                prepared = [pool.submit(self._prepare, claim) for claim in claims]
                self._handoff.put(_Batch(claims, prepared))
        except Exception:
            log.exception("feeder crashed; the worker stops after the batches in hand")
        finally:
            self._handoff.put(None)

    def _claim_batch(self) -> list[ClaimedImage]:
        """Claim up to max_batch images, waiting up to batch_wait_ms for a partial batch to fill."""
        config = self.config
        claims = self.queue.claim(config.max_batch, config.lease_s)
        deadline = time.monotonic() + config.batch_wait_ms / 1000
        while claims and len(claims) < config.max_batch and time.monotonic() < deadline:
            time.sleep(0.002)
            claims += self.queue.claim(config.max_batch - len(claims), config.lease_s, claims[0].options)
        return claims

    def _prepare(self, claim: ClaimedImage) -> Tensor:
        return self.engine.prepare(decode_image(self._read(claim.input), self.config.policy))

    def _read(self, image: ImageInput) -> bytes:
        if image.data is not None:
            return image.data
        assert image.url is not None
        return fetch_url(image.url, self.config.fetch)

    # -- model loop ----------------------------------------------------------------------------

    def _caption(self, batch: _Batch) -> None:
        names = [f"image {claim.index} of job {claim.job_id}" for claim in batch.claims]
        options = batch.claims[0].options
        for claim, outcome in zip(
            batch.claims, caption_prepared(self.engine, batch.prepared, options, names), strict=True
        ):
            if isinstance(outcome, BlipqError):
                self._finish(claim, error=outcome)
            else:
                self._finish(claim, caption=outcome)

    def _finish(self, claim: ClaimedImage, *, caption: str | None = None, error: BlipqError | None = None) -> None:
        if error is not None:
            info = ErrorInfo(error.code, f"image {claim.index}: {error.message}")
            self._persist(lambda: self.queue.fail(claim, info), "record an error")
        else:
            assert caption is not None
            self._persist(lambda: self.queue.complete(claim, caption), "record a caption")
        with self._held_lock:
            self._held.pop((claim.job_id, claim.index), None)

    def _persist(self, operation: Callable[[], object], what: str) -> None:
        """Retry a queue write through an outage with capped backoff, so the worker never crash-loops.

        After `stop`, give up once a lease would have expired anyway: the image is then redone elsewhere.
        """
        backoff = _Backoff()
        give_up_at: float | None = None
        while True:
            try:
                operation()
                return
            except BlipqError as exc:
                if self._stop.is_set():
                    give_up_at = give_up_at or time.monotonic() + self.config.lease_s
                    if time.monotonic() > give_up_at:
                        log.error("giving up trying to %s: %s", what, exc.message)
                        return
                delay = backoff.next()
                log.warning("cannot %s (%s); retrying in %.1f s", what, exc.message, delay)
                time.sleep(delay)

    # -- keeper --------------------------------------------------------------------------------

    def _keep(self, stop: threading.Event) -> None:
        """Renew held leases and send heartbeats; after `stop`, keep renewing until nothing is held."""
        interval = min(self.config.heartbeat_s, self.config.lease_s / 3)
        while True:
            stopped = stop.wait(interval)
            with self._held_lock:
                held = list(self._held.values())
            if stopped and not held:
                return
            try:
                if held:
                    self.queue.renew(held, self.config.lease_s)
                if not stopped:
                    self.queue.heartbeat(self._beat())
            except BlipqError as exc:
                log.warning("cannot renew leases or send a heartbeat: %s", exc.message)
            if stopped:
                time.sleep(interval)

    def _beat(self) -> WorkerInfo:
        return WorkerInfo(self.info.worker_id, self.info.model, self.info.device, time.time())
