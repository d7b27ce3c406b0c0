"""The gateway's RabbitMQ transport (aio-pika): publish jobs with confirms and reply-to correlation, consume
the replies from this gateway's own durable queue.

A job is accepted only once the broker confirmed its message. A full request queue nacks the publish
(`x-overflow: reject-publish`): 429 `queue_full`; no connection, or a broker in a memory or disk alarm: 503
`queue_unavailable`. Jobs are published on one connection, replies consumed on another, so an alarm, which
stops the publishing one, leaves replies and /readyz going. The robust connections reconnect with capped
backoff and redeclare the queues and the reply consumer by themselves. A gateway whose reply queue another
gateway consumes already (the same gateway id) does not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

import aio_pika
import aio_pika.abc
import pamqp.common
from pamqp import commands
from pydantic import ValidationError

from blipq.contract import replies as reply_codec
from blipq.contract.amqp import (
    EXCHANGE,
    REQUEST_QUEUE,
    ROUTING_KEY,
    Backoff,
    QueueSpec,
    reply_queue,
    topology,
)
from blipq.contract.errors import BlipqError, ModelUnavailable, QueueFull, QueueUnavailable
from blipq.contract.framing import FRAMED_CONTENT_TYPE, frame_request
from blipq.contract.parts import PART_HEADER, Part, PartHeader, split
from blipq.gateway.broker import Dispatch, JobFinished, OutcomeHandler
from blipq.gateway.service import QUEUE_FULL_RETRY_AFTER_S
from blipq.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
BLOCKED_PROBE_S = 0.05  # how long a publish looks whether RabbitMQ blocks publishing (a memory or disk alarm)
BLOCKED_POLL_S = 0.2  # how often a publish waiting for its confirm looks again
ALARM = "RabbitMQ refuses new messages now (a memory or disk alarm on the broker); retry shortly"
STORE_RETRY_S = 1.0
FIRST_ATTEMPT_S = 15.0  # how long start-up waits for the first connection's verdict
TAKEN_GRACE_S = 5.0  # how long a reply queue may look taken before this gateway gives up starting

#: What a lost or refused connection raises (ChannelInvalidStateError is a RuntimeError, not an AMQPError).
_BROKER_ERRORS = (
    aio_pika.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True)
class MessageSizes:
    """How a job becomes messages: parts of at most `part_bytes` and `part_images` (one bigger image goes alone),
    none over `max_bytes`, the broker's max_message_size."""

    max_bytes: int
    part_bytes: int
    part_images: int

    @classmethod
    def of(cls, settings: GatewaySettings) -> MessageSizes:
        return cls(settings.max_message_bytes, settings.part_bytes, settings.part_images)


class ReplyQueueTaken(RuntimeError):
    """Another gateway consumes this gateway's reply queue: the two would take (and drop) each other's replies."""

    def __init__(self, queue: str) -> None:
        super().__init__(
            f"another gateway already consumes {queue}: every gateway on one RabbitMQ needs its own id "
            "(--gateway-id or BLIPQ_GATEWAY_ID; the default is the host name). Not starting."
        )


class RabbitBroker:
    replays_unfinished = False  # the broker keeps every confirmed request across our restarts

    def __init__(self, url: str, *, gateway_id: str, max_messages: int, sizes: MessageSizes) -> None:
        self.url = url
        self.max_messages = max_messages
        self.sizes = sizes
        self.gateway_id = gateway_id
        self.replies: QueueSpec = reply_queue(gateway_id)
        self._shared_replies = False
        self._on_outcome: OutcomeHandler | None = None
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None  # replies, declarations, readiness
        self._publisher: aio_pika.abc.AbstractRobustConnection | None = None  # jobs
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def start(self, on_outcome: OutcomeHandler, *, shared_store: str | None = None) -> None:
        """Connect in the background: the gateway serves (503 for jobs) until the broker answers. Raises
        `ReplyQueueTaken` when the first connection finds another gateway consuming this one's reply queue.

        Gateways on one shared store consume one reply queue, named after the store: any of them records any
        reply, so the replies of a gateway gone for good are still recorded (and its waiters elsewhere woken)."""
        self._on_outcome = on_outcome
        if shared_store is not None:
            self.replies, self._shared_replies = reply_queue(f"store-{shared_store}"), True
        first_attempt = asyncio.Event()
        self._connecting = asyncio.create_task(self._connect_until_done(first_attempt))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first_attempt.wait(), FIRST_ATTEMPT_S)
        if self._connecting.done() and (error := self._connecting.exception()) is not None:
            log.error("%s", error)
            raise error

    async def _connect_until_done(self, first_attempt: asyncio.Event) -> None:
        backoff = Backoff()
        taken_until = None  # a gateway just killed still counts as a consumer until RabbitMQ notices
        try:
            while True:
                try:
                    await self._connect()
                    return
                except ReplyQueueTaken:
                    taken_until = taken_until or asyncio.get_running_loop().time() + TAKEN_GRACE_S
                    if asyncio.get_running_loop().time() > taken_until:
                        raise
                    await asyncio.sleep(1.0)
                except _BROKER_ERRORS as exc:
                    pause_s = backoff.pause_s()
                    log.warning("cannot reach RabbitMQ (%s); retrying in %.1f s", exc, pause_s)
                    first_attempt.set()
                    await asyncio.sleep(pause_s)
        finally:
            first_attempt.set()

    async def _connect(self) -> None:
        """Two connections, as RabbitMQ advises: during a memory or disk alarm it stops reading from the connections
        that publish, and everything on them waits (aiormq holds every frame), while a connection that only
        consumes goes on. So replies are consumed and acknowledged, and /readyz answers, on one that never
        publishes; jobs are published on the other."""
        replies = await self._open("replies")
        jobs = None
        try:
            channel = await replies.channel()
            shape = topology(self.max_messages)
            exchanges = {
                spec.name: await channel.declare_exchange(spec.name, aio_pika.ExchangeType(spec.type), durable=True)
                for spec in shape.exchanges
            }
            queues = {spec.name: await self._declare(channel, spec) for spec in shape.queues}
            for binding in shape.bindings:
                await queues[binding.queue].bind(exchanges[binding.exchange], binding.routing_key)
            await self._consume_replies(channel)
            jobs = await self._open("jobs")
            publishing = await jobs.channel(publisher_confirms=True)
            exchange = await publishing.get_exchange(EXCHANGE, ensure=False)  # declared above
        except BaseException:
            for connection in (replies, jobs):
                if connection is not None:
                    await connection.close()
            raise
        self._connection, self._publisher, self._exchange = replies, jobs, exchange
        log.info("connected to RabbitMQ; replies come to %s", self.replies.name)

    async def _consume_replies(self, channel: aio_pika.abc.AbstractChannel) -> None:
        replies = await self._declare(channel, self.replies)
        if self._shared_replies:
            await replies.consume(self._on_reply)
            return
        if replies.declaration_result.consumer_count:
            raise ReplyQueueTaken(self.replies.name)
        await replies.consume(self._on_reply, exclusive=True)
        # Two gateways that started at the same moment both saw no consumer: now each sees the other.
        if ((await self._declare(channel, self.replies)).declaration_result.consumer_count or 0) > 1:
            raise ReplyQueueTaken(self.replies.name)

    async def _open(self, purpose: str) -> aio_pika.abc.AbstractRobustConnection:
        """A robust connection, named for RabbitMQ's tools (`rabbitmqctl list_connections client_properties`)."""
        name = f"blipq gateway {self.gateway_id} ({purpose})"
        return await aio_pika.connect_robust(
            self.url, reconnect_interval=1, fail_fast=True, client_properties={"connection_name": name}
        )

    @staticmethod
    async def _declare(channel: aio_pika.abc.AbstractChannel, spec: QueueSpec) -> aio_pika.abc.AbstractQueue:
        return await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))

    @property
    def connected(self) -> bool:
        """Connected now: not before the first connection, nor while a robust connection reconnects."""
        return all(
            connection is not None and connection.connected.is_set()
            for connection in (self._connection, self._publisher)
        )

    async def _refusing_publishes(self) -> bool:
        """RabbitMQ blocked the publishing connection (a memory or disk alarm): until it unblocks it, a publish
        would wait for nothing. aiormq's `ready()` waits for exactly that."""
        transport = self._publisher.transport if self._publisher is not None else None
        if transport is None:
            return False
        try:
            await asyncio.wait_for(transport.connection.ready(), BLOCKED_PROBE_S)
        except TimeoutError:
            return True
        return False

    async def publish(self, dispatch: Dispatch) -> None:
        """Publish the job as one message per part (`blipq.contract.parts`), all at once; returns once the broker
        confirmed every part. A part refused after others were taken leaves those to run: their replies find no
        job (the caller discards it) and are dropped."""
        if self._exchange is None or not self.connected:
            raise QueueUnavailable("RabbitMQ is not connected; retry shortly")
        if await self._refusing_publishes():
            raise QueueUnavailable(ALARM)
        parts = split(
            dispatch.images,
            dispatch.options,
            indices=dispatch.indices,
            part_bytes=self.sizes.part_bytes,
            part_images=self.sizes.part_images,
            max_message_bytes=self.sizes.max_bytes,
        )
        outcomes = await asyncio.gather(
            *(self._publish_part(self._exchange, dispatch, part) for part in parts), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _publish_part(self, exchange: aio_pika.abc.AbstractExchange, dispatch: Dispatch, part: Part) -> None:
        message = aio_pika.Message(
            frame_request(part.images, dispatch.options),  # the bytes as they are: no base64 on either side
            content_type=FRAMED_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=dispatch.job_id,
            # A publish retried after a lost confirm is the same request to a worker; another part is not.
            message_id=f"{dispatch.job_id}/{part.message_id}",
            reply_to=self.replies.name,
            headers={PART_HEADER: _field_table(part.header)},
        )
        try:
            confirmation = await self._confirmed(exchange.publish(message, ROUTING_KEY, mandatory=True))
        except aio_pika.exceptions.DeliveryError as exc:
            raise _refused(exc.frame) from None
        except TimeoutError:
            raise QueueUnavailable(
                f"RabbitMQ did not confirm the job within {PUBLISH_TIMEOUT_S:g} s (overloaded, or a memory or disk "
                "alarm); retry shortly"
            ) from None
        except _BROKER_ERRORS as exc:
            raise QueueUnavailable(f"RabbitMQ did not take the job: {type(exc).__name__}: {exc}") from None
        if not isinstance(confirmation, commands.Basic.Ack):
            raise _refused(confirmation)

    async def _confirmed(self, publish: Awaitable[object]) -> object:
        """The broker's answer to a publish, within PUBLISH_TIMEOUT_S (TimeoutError). RabbitMQ blocks a connection
        the moment it publishes during a memory or disk alarm: then QueueUnavailable at once, not at the timeout
        (the message may still reach the queue when the alarm clears; its reply finds no job and is dropped)."""
        publishing = asyncio.ensure_future(publish)
        deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT_S
        try:
            while not publishing.done():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait({publishing}, timeout=min(left, BLOCKED_POLL_S))
                if not publishing.done() and await self._refusing_publishes():
                    raise QueueUnavailable(ALARM)
            return publishing.result()
        finally:
            publishing.cancel()

    async def readiness(self) -> dict[str, object]:
        """Connected, and at least one worker consumes the request queue (a passive declare tells)."""
        if self._connection is None or not self.connected:
            raise QueueUnavailable("RabbitMQ is not connected")
        try:
            channel = await self._connection.channel()
            try:
                queue = await channel.declare_queue(REQUEST_QUEUE, passive=True)
            finally:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await channel.close()
        except (*_BROKER_ERRORS, RuntimeError) as exc:  # RuntimeError: the connection dropped just now
            raise QueueUnavailable(f"RabbitMQ does not answer: {type(exc).__name__}: {exc}") from None
        if await self._refusing_publishes():
            raise QueueUnavailable(ALARM)
        declared = queue.declaration_result
        if not declared.consumer_count:
            raise ModelUnavailable(f"no worker consumes {REQUEST_QUEUE}; start one with `blipq worker --broker ...`")
        return {"mode": "rabbitmq", "workers": declared.consumer_count, "waiting_messages": declared.message_count}

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        for connection in (self._publisher, self._connection):
            if connection is not None:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await connection.close()

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        """Acknowledged once the outcome is stored: one the store could not record comes back later."""
        try:
            reply = reply_codec.decode(message.body, message.headers)
        except ValidationError as exc:
            log.warning("reply %s is not a caption reply; dropped: %s", message.correlation_id, exc)
            await _settle(message.ack())
            return
        assert self._on_outcome is not None
        try:
            outcome = JobFinished(reply.correlation_id, reply.results, reply.error, reply.indices)
            await self._on_outcome(outcome)
        except BlipqError as exc:
            log.warning("reply %s not stored (%s); back to the queue", message.correlation_id, exc.message)
            await asyncio.sleep(STORE_RETRY_S)  # not at once: a full or locked disk takes a while
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())


async def _settle(acknowledgement: Awaitable[None]) -> None:
    """A reply not acknowledged because the connection dropped comes again; the store keeps the first outcome."""
    try:
        await acknowledgement
    except _BROKER_ERRORS as exc:
        log.info("reply not acknowledged (%s); it will be delivered again", exc)


def _field_table(header: PartHeader) -> pamqp.common.FieldTable:
    return {"index": header.index, "count": header.count, "images": list[pamqp.common.FieldValue](header.images)}


def _refused(frame: object) -> QueueFull | QueueUnavailable:
    if isinstance(frame, commands.Basic.Nack):
        return QueueFull(
            f"the request queue is full (x-max-length); retry in {QUEUE_FULL_RETRY_AFTER_S} s", QUEUE_FULL_RETRY_AFTER_S
        )
    if isinstance(frame, commands.Basic.Return):
        return QueueUnavailable(f"no queue is bound to exchange {EXCHANGE!r} for {ROUTING_KEY!r}")
    return QueueUnavailable(f"RabbitMQ did not confirm the job ({type(frame).__name__})")
