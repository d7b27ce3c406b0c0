"""`blipq worker`: consume caption requests from RabbitMQ, batch their images across messages, reply, ack.

pika is not thread-safe, so one thread owns the connection: it receives messages, publishes replies
and acks, and keeps heartbeats flowing between events. The batcher runs the model on its own
threads and hands each finished request back with `add_callback_threadsafe`. A request is acked
only after the broker confirmed its reply; a worker that dies leaves its unacked requests to be
delivered again (past the delivery limit they are dead-lettered and answered `worker_lost`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from dataclasses import dataclass

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from blipq.contract.amqp import (
    CONTENT_TYPE,
    DEAD_LETTER_EXCHANGE,
    DEAD_QUEUE,
    EXCHANGE,
    ROUTING_KEY,
    request_queue,
)
from blipq.contract.errors import BlipqError
from blipq.contract.images import ImagePolicy
from blipq.contract.messages import ImageResult
from blipq.inference.batcher import Batcher, BatcherConfig, WorkItem
from blipq.inference.engine import CaptionEngine
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.requests import ParsedRequest, dead_letter_error, error_reply_body, parse_request, reply_body

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


@dataclass
class _InFlight:
    delivery_tag: int
    reply_to: str
    correlation_id: str
    request: ParsedRequest


def declare_topology(channel: BlockingChannel, max_messages: int) -> None:
    """Idempotent, with the arguments every gateway and worker uses (AMQP contract v1)."""
    channel.exchange_declare(EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
    for spec in (request_queue(max_messages), DEAD_QUEUE):
        channel.queue_declare(spec.name, durable=True, arguments=dict(spec.arguments))
    channel.queue_bind(request_queue(max_messages).name, EXCHANGE, routing_key=ROUTING_KEY)
    channel.queue_bind(DEAD_QUEUE.name, DEAD_LETTER_EXCHANGE)


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
    ) -> None:
        """`request_policy` checks each image of a message on arrival, bytes included (a message may come from
        any publisher, not only from a gateway that checked it already)."""
        self.url = url
        self.config = config
        self.model_name = model_name
        self.max_messages = max_messages
        self.max_images = max_images
        self.request_policy = request_policy
        self.metrics = metrics or InferenceMetrics()
        self.batcher = Batcher(engine, config, on_start=lambda item: None, on_done=self._done, metrics=self.metrics)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._in_flight: dict[str, _InFlight] = {}
        self._generation = 0  # a new connection makes the delivery tags of the old one meaningless
        self.connected = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then finish and answer every request already received, and return."""
        self.batcher.start()
        delay = 0.5
        try:
            while not stop.is_set():
                try:
                    self._connect()
                    delay = 0.5
                    while not stop.is_set():
                        self._pump(0.2)
                    self._drain()
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self.connected.clear()
                    self._in_flight.clear()  # unacked: the broker delivers them again
                    log.warning("RabbitMQ connection lost (%s); reconnecting in %.1f s", exc, delay)
                    stop.wait(delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
        finally:
            self.batcher.stop()
            self._close()

    # -- connection thread ---------------------------------------------------------------------

    def _connect(self) -> None:
        self._close()
        parameters = pika.URLParameters(self.url)
        parameters.heartbeat = parameters.heartbeat or 30
        connection = pika.BlockingConnection(parameters)
        channel = connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, self.max_messages)
        # Enough unacked requests to fill a batch while the previous one is on the model.
        channel.basic_qos(prefetch_count=2 * self.config.max_batch)
        channel.basic_consume(request_queue(self.max_messages).name, self._on_request)
        channel.basic_consume(DEAD_QUEUE.name, self._on_dead_letter)
        self._connection, self._channel = connection, channel
        self._generation += 1
        self.connected.set()
        log.info("consuming %s on %s", request_queue(self.max_messages).name, parameters.host)

    def _pump(self, seconds: float) -> None:
        assert self._connection is not None
        self._connection.process_data_events(time_limit=seconds)

    def _drain(self) -> None:
        """Stop taking requests; answer the ones in hand (prefetch bounds them)."""
        assert self._channel is not None
        for tag in list(self._channel.consumer_tags):
            self._channel.basic_cancel(tag)
        while self._in_flight:
            self._pump(0.1)

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
            request = parse_request(body, properties.content_type, self.request_policy, self.max_images)
        except BlipqError as exc:
            log.warning("request %s rejected: %s", properties.correlation_id, exc.message)
            channel.basic_reject(tag, requeue=False)  # answered from the dead-letter queue
            return
        key = f"{self._generation}:{tag}"
        self._in_flight[key] = _InFlight(tag, properties.reply_to, properties.correlation_id, request)
        if request.to_run:
            self.batcher.submit(WorkItem(key, [image for _, image in request.to_run], request.options))
        else:
            self._answer(key, [])

    def _on_dead_letter(
        self, channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        # Acked whatever happens to its reply: a dead letter that came back would be answered again for ever.
        try:
            if properties.reply_to and properties.correlation_id:
                code, message = dead_letter_error(properties.headers)
                body = error_reply_body(properties.correlation_id, code, message)
                self._publish(properties.reply_to, properties.correlation_id, body)
            else:
                log.warning("dead letter without reply_to or correlation_id dropped")
        finally:
            channel.basic_ack(method.delivery_tag)

    def _answer(self, key: str, results: list[ImageResult]) -> None:
        in_flight = self._in_flight.pop(key, None)
        if in_flight is None or self._channel is None:
            return  # from a connection that is gone: the broker delivers that request again
        body = reply_body(in_flight.correlation_id, in_flight.request.merge(results), self.model_name)
        self._publish(in_flight.reply_to, in_flight.correlation_id, body)
        self._channel.basic_ack(in_flight.delivery_tag)

    def _publish(self, reply_to: str, correlation_id: str, body: bytes) -> None:
        """Publish a reply and wait for the broker's confirm (confirm_delivery makes basic_publish wait).

        A reply the broker will not take is the publisher's problem, not the worker's: its queue is gone or
        refuses messages (full with `reject-publish`). It is logged and counted, and the caller settles the
        request all the same; retrying would hold the request, and every other publisher's, for ever."""
        assert self._channel is not None
        properties = BasicProperties(content_type=CONTENT_TYPE, correlation_id=correlation_id, delivery_mode=2)
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
        connection = self._connection
        if connection is None or not item.key.startswith(f"{self._generation}:"):
            return
        try:
            connection.add_callback_threadsafe(functools.partial(self._answer, item.key, results))
        except (pika.exceptions.AMQPError, OSError, RuntimeError):
            log.warning("connection gone before %s was answered; the broker delivers it again", item.key)
