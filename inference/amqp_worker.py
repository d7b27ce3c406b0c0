"""`blipq worker`: consume caption requests from RabbitMQ, batch their images across messages, reply, ack.

pika is not thread-safe, so one thread owns the connection: it receives messages, publishes replies
and acks, and keeps heartbeats flowing between events. The batcher runs the model on its own
threads and hands each finished request back to it. A request is acked only after the broker confirmed
its reply; a worker that dies leaves its unacked requests to be delivered again (past the delivery limit
they are dead-lettered and answered `worker_lost`).

A connection (or channel) the broker closes, for example past its consumer_timeout, is noticed at the next
pump (0.2 s) and opened again. Its deliveries are void: requests not started are withdrawn from the
batcher, and a request under way keeps running; when the broker delivers it again here, that copy is
answered by the running work (or by its outcome, kept a while), so it runs once. A publisher's message_id
(else its reply_to and correlation_id) names a request; a second copy of one already running is dropped.
A reply the broker will not take is logged and counted, and its request settled all the same.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from blipq.contract import replies as reply_codec
from blipq.contract.amqp import (
    CONTENT_TYPE,
    DEAD_QUEUE,
    Backoff,
    request_queue,
    topology,
)
from blipq.contract.errors import BlipqError, InputTooLarge
from blipq.contract.images import ImagePolicy
from blipq.contract.messages import ImageResult
from blipq.contract.parts import PART_HEADER
from blipq.contract.settings import DEFAULT_MAX_MESSAGE_BYTES
from blipq.inference.batcher import Batcher, BatcherConfig, WorkItem
from blipq.inference.engine import CaptionEngine
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.prefetch import PrefetchTuner
from blipq.inference.requests import ParsedRequest, dead_letter_error, parse_request
from blipq.inference.settings import DEFAULT_MAX_HELD_BYTES, InferenceSettings

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 45.0  # below compose's stop_grace_period (60 s): answered before SIGKILL


class BatcherDied(RuntimeError):
    """The batcher's threads are gone: nothing would ever be captioned; the worker exits (non-zero)."""


@dataclass
class _Delivery:
    """A request message as delivered on one connection (its tag means nothing on another)."""

    delivery_tag: int
    reply_to: str
    correlation_id: str
    request: ParsedRequest
    part: object = None  # the request's `blipq-part` header, echoed on its reply


@dataclass
class _Work:
    """A request's images in the batcher, and the delivery its outcome answers: None once that delivery's
    connection is gone, until the broker delivers the request again (to this worker: it is adopted)."""

    identity: str
    delivery: _Delivery | None


#: Outcomes of work whose delivery was lost, kept (the newest ones) for a copy the broker delivers again.
UNCLAIMED_KEPT = 1000


def _part(properties: BasicProperties) -> object:
    """A request's part header as it came (a worker echoes it, whatever it holds), or None."""
    return (properties.headers or {}).get(PART_HEADER)


def declare_topology(channel: BlockingChannel, max_messages: int) -> None:
    """Idempotent, with the arguments every gateway and worker uses (AMQP contract v1)."""
    shape = topology(max_messages)
    for exchange in shape.exchanges:
        channel.exchange_declare(exchange.name, exchange_type=exchange.type, durable=True)
    for spec in shape.queues:
        channel.queue_declare(spec.name, durable=True, arguments=dict(spec.arguments))
    for binding in shape.bindings:
        channel.queue_bind(binding.queue, binding.exchange, routing_key=binding.routing_key)


class AmqpWorker:
    def __init__(
        self,
        url: str,
        engine: CaptionEngine,
        config: BatcherConfig,
        *,
        model_name: str,
        max_messages: int,
        max_images: int,
        request_policy: ImagePolicy,
        metrics: InferenceMetrics | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
    ) -> None:
        """`request_policy` checks each image of a message on arrival, bytes included (a message may come from
        any publisher, not only from a gateway that checked it already). A message over `max_message_bytes` is
        refused; the prefetch keeps the messages held within `max_held_bytes`."""
        self.url = url
        self.config = config
        self.model_name = model_name
        self.max_messages = max_messages
        self.max_images = max_images
        self.request_policy = request_policy
        self.max_message_bytes = max_message_bytes
        # Two batches of images in hand (one on the model, the next ready), in as many messages as the recent
        # ones carry, and never more than max_held_bytes: each message is at most max_message_bytes.
        self.prefetch = PrefetchTuner(2 * config.max_batch, cap=max(1, max_held_bytes // max_message_bytes))
        self.metrics = metrics or InferenceMetrics()
        self.batcher = Batcher(engine, config, on_start=lambda item: None, on_done=self._done, metrics=self.metrics)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._generation = 0  # connections opened so far
        # Connection thread only: the work in the batcher by key, its key by request identity, and outcomes
        # whose delivery was lost. The batcher's threads hand outcomes over through `_completed`.
        self._work: dict[str, _Work] = {}
        self._work_keys: dict[str, str] = {}
        self._unclaimed: OrderedDict[str, list[ImageResult]] = OrderedDict()
        self._completed: queue.SimpleQueue[tuple[str, list[ImageResult]]] = queue.SimpleQueue()
        self._numbers = itertools.count()
        self._request_consumer: str | None = None
        self._prefetch_now = 0
        self.connected = threading.Event()

    @classmethod
    def of(cls, settings: InferenceSettings, engine: CaptionEngine, metrics: InferenceMetrics) -> AmqpWorker:
        """The worker `blipq worker` runs, from its settings."""
        assert settings.broker_url is not None
        return cls(
            settings.broker_url, engine, BatcherConfig.of(settings), model_name=settings.model,
            max_messages=settings.max_queued_messages, max_images=settings.max_images_per_job,
            request_policy=ImagePolicy.of(settings), metrics=metrics,
            max_message_bytes=settings.max_message_bytes, max_held_bytes=settings.max_held_bytes,
        )  # fmt: skip

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then finish and answer every request already received, and return."""
        self.batcher.start()
        backoff = Backoff()
        try:
            while not stop.is_set():
                try:
                    self._connect()
                    backoff.reset()
                    while not stop.is_set():
                        self._pump(0.2)
                        if not self.batcher.alive():
                            raise BatcherDied("the model's threads died; see the log above")
                    self._drain()
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self.connected.clear()
                    self._deliveries_lost()
                    pause_s = backoff.pause_s()
                    log.warning("RabbitMQ connection lost (%s); reconnecting in %.1f s", exc, pause_s)
                    stop.wait(pause_s)
        finally:
            self.batcher.stop()
            self._close()

    # -- connection thread ---------------------------------------------------------------------

    def _connect(self) -> None:
        self._close()
        parameters = pika.URLParameters(self.url)
        parameters.heartbeat = parameters.heartbeat or 30
        parameters.client_properties = {"connection_name": "blipq worker"}  # as RabbitMQ's tools list it
        connection = pika.BlockingConnection(parameters)
        channel = connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, self.max_messages)
        channel.basic_consume(DEAD_QUEUE.name, self._on_dead_letter)
        self._connection, self._channel = connection, channel
        self._consume_requests(self.prefetch.wanted)
        self._generation += 1
        self.connected.set()
        log.info("consuming %s on %s", request_queue(self.max_messages).name, parameters.host)

    def _consume_requests(self, prefetch: int) -> None:
        """Consume the request queue holding up to `prefetch` messages (a consumer's prefetch is set when it
        starts: a new one takes a new prefetch)."""
        assert self._channel is not None
        self._channel.basic_qos(prefetch_count=prefetch)
        self._request_consumer = self._channel.basic_consume(request_queue(self.max_messages).name, self._on_request)
        self._prefetch_now = prefetch

    def _retune_prefetch(self) -> None:
        """The recent messages call for a prefetch at least twice or at most half the present one: the consumer
        starts again with it. Deliveries already here stay valid (acks go to the channel, not to the consumer),
        and stay in hand beside the new consumer's until they are answered.

        pika returns to the queue (nack, requeue) the deliveries that arrive between the cancel and its ok, and
        a quorum queue counts that against the delivery limit: so the deliveries already received are handed
        to `_on_request` first, and the prefetch changes only by a factor of two or more, which makes that
        short window rare."""
        wanted, now = self.prefetch.wanted, self._prefetch_now
        if self._channel is None or self._request_consumer is None or now // 2 < wanted < now * 2:
            return
        assert self._connection is not None
        self._connection.process_data_events(time_limit=0)  # dispatch what has arrived
        log.info("holding up to %d request messages (was %d)", wanted, now)
        self._channel.basic_cancel(self._request_consumer)
        self._consume_requests(wanted)

    def _pump(self, seconds: float) -> None:
        assert self._connection is not None
        self._connection.process_data_events(time_limit=seconds)
        if self._channel is not None and self._channel.is_closed:  # e.g. a consumer_timeout: the broker closed it
            raise pika.exceptions.ChannelWrongStateError("RabbitMQ closed the channel")
        self._answer_completed()
        self._retune_prefetch()

    def _drain(self) -> None:
        """Stop taking requests; answer the ones in hand (prefetch bounds them) for at most DRAIN_TIMEOUT_S,
        within compose's grace period. What is left unanswered, the broker delivers again."""
        assert self._channel is not None
        self._request_consumer = None  # no more tuning: nothing is consumed any more
        for tag in list(self._channel.consumer_tags):
            self._channel.basic_cancel(tag)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(work.delivery is not None for work in self._work.values()):
            if time.monotonic() > deadline:
                log.warning("requests still unanswered after %g s; the broker delivers them again", DRAIN_TIMEOUT_S)
                return
            self._pump(0.1)

    def _deliveries_lost(self) -> None:
        """The connection is gone, and with it every unacked delivery: the broker delivers them again (to any
        worker). Work not started yet is withdrawn; work under way runs on, and its outcome answers the copy
        delivered again if that comes here (`_on_request`), instead of running twice."""
        for work in self._work.values():
            work.delivery = None
        for key in self.batcher.withdraw(list(self._work)):
            del self._work_keys[self._work.pop(key).identity]

    def _close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                self._connection.close()
        self._connection = self._channel = None

    def _on_request(
        self, channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        tag = method.delivery_tag
        if not properties.reply_to or not properties.correlation_id:
            log.warning("request without reply_to or correlation_id rejected (dead-lettered)")
            channel.basic_reject(tag, requeue=False)
            return
        try:
            if len(body) > self.max_message_bytes:
                raise InputTooLarge(f"a {len(body)}-byte message; the limit is {self.max_message_bytes} bytes")
            request = parse_request(body, properties.content_type, self.request_policy, self.max_images)
        except BlipqError as exc:
            log.warning("request %s rejected: %s", properties.correlation_id, exc.message)
            channel.basic_reject(tag, requeue=False)  # answered from the dead-letter queue
            return
        self.prefetch.observe(request.size)
        delivery = _Delivery(tag, properties.reply_to, properties.correlation_id, request, _part(properties))
        # The publisher's message id, else its reply address: a copy delivered again, or published twice by a
        # publisher that retried, is the same request.
        identity = properties.message_id or f"{properties.reply_to} {properties.correlation_id}"
        if identity in self._unclaimed:  # it ran here already, and its first delivery was lost
            self._reply(delivery, self._unclaimed.pop(identity))
            return
        if (key := self._work_keys.get(identity)) is not None:
            work = self._work[key]
            if work.delivery is None:
                work.delivery = delivery  # under way here: this copy is answered when it is done
            else:
                log.info("request %s is already being captioned; the duplicate is dropped", identity)
                channel.basic_ack(tag)
            return
        if not request.to_run:
            self._reply(delivery, [])
            return
        key = f"work-{next(self._numbers)}"
        self._work[key] = _Work(identity, delivery)
        self._work_keys[identity] = key
        self.batcher.submit(WorkItem(key, [image for _, image in request.to_run], request.options))

    def _on_dead_letter(
        self, channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        # Acked whatever happens to its reply: a dead letter that came back would be answered again for ever.
        try:
            if properties.reply_to and properties.correlation_id:
                body = reply_codec.encode_error(properties.correlation_id, dead_letter_error(properties.headers))
                self._publish(properties.reply_to, properties.correlation_id, body, _part(properties))
            else:
                log.warning("dead letter without reply_to or correlation_id dropped")
        finally:
            channel.basic_ack(method.delivery_tag)

    def _answer_completed(self) -> None:
        """Answer the work the batcher finished (on the connection thread, which owns the channel)."""
        while True:
            try:
                key, results = self._completed.get_nowait()
            except queue.Empty:
                return
            work = self._work.pop(key)
            del self._work_keys[work.identity]
            if work.delivery is not None:
                self._reply(work.delivery, results)
                continue
            # Its delivery was lost: kept a while for the copy the broker delivers again.
            self._unclaimed[work.identity] = results
            while len(self._unclaimed) > UNCLAIMED_KEPT:
                self._unclaimed.popitem(last=False)

    def _reply(self, delivery: _Delivery, results: list[ImageResult]) -> None:
        """Reply with the results of the images run (the refused ones merged in), then ack."""
        assert self._channel is not None
        body = reply_codec.encode_results(delivery.correlation_id, delivery.request.merge(results), self.model_name)
        self._publish(delivery.reply_to, delivery.correlation_id, body, delivery.part)
        self._channel.basic_ack(delivery.delivery_tag)

    def _publish(self, reply_to: str, correlation_id: str, body: bytes, part: object) -> None:
        """Publish a reply (with the request's part header, if it had one) and wait for the broker's confirm
        (confirm_delivery makes basic_publish wait).

        A reply the broker will not take is the publisher's problem, not the worker's: its queue is gone or
        refuses messages (full with `reject-publish`). It is logged and counted, and the caller settles the
        request all the same; retrying would hold the request, and every other publisher's, for ever."""
        assert self._channel is not None
        properties = BasicProperties(
            content_type=CONTENT_TYPE,
            correlation_id=correlation_id,
            delivery_mode=2,
            headers=None if part is None else {PART_HEADER: part},
        )
        try:
            self._channel.basic_publish("", reply_to, body, properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            self._undeliverable(reply_to, correlation_id, "no_queue", "no such queue")
        except pika.exceptions.NackError:
            self._undeliverable(reply_to, correlation_id, "refused", "the queue refused it (full?)")

    def _undeliverable(self, reply_to: str, correlation_id: str, reason: str, why: str) -> None:
        log.warning("reply to %s for %s not delivered: %s; the request is settled", reply_to, correlation_id, why)
        self.metrics.undeliverable_replies.labels(reason=reason).inc()

    # -- model thread --------------------------------------------------------------------------

    def _done(self, item: WorkItem, results: list[ImageResult]) -> None:
        """Hand the outcome to the connection thread, and wake it (it also looks at every pump)."""
        self._completed.put((item.key, results))
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError, RuntimeError):
                connection.add_callback_threadsafe(self._answer_completed)
