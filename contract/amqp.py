"""AMQP contract v1: the topology every gateway and worker declares (with identical arguments), and the
reply a worker sends to a request's `reply_to`. Outside services publish and consume by these rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

EXCHANGE = "blipq"
ROUTING_KEY = "caption"
REQUEST_QUEUE = "blipq.caption"
DEAD_LETTER_EXCHANGE = "blipq.dlx"
DEAD_LETTER_QUEUE = "blipq.dead"
REPLY_QUEUE_PREFIX = "blipq.replies."
#: Deliveries of one request beyond the first before it is dead-lettered (RabbitMQ 3.x delivers it N+1 times).
DELIVERY_LIMIT = 3
#: The poison policy of both modes: a request whose process died under it this many times is answered
#: `worker_lost` instead of being run again. Over RabbitMQ, the delivery limit above; in the embedded mode,
#: the default of `BLIPQ_MAX_ATTEMPTS`, counted in the store.
MAX_CUT_OFF_RUNS = DELIVERY_LIMIT + 1
CONTENT_TYPE = "application/json"


class Backoff:
    """The pauses between attempts to reach RabbitMQ, on both sides: doubling from 0.5 s up to 10 s, and
    back to the first after a success."""

    FIRST_S = 0.5
    MAX_S = 10.0

    def __init__(self) -> None:
        self._next_s = self.FIRST_S

    def pause_s(self) -> float:
        """The pause before the next attempt (each one twice the last, up to MAX_S)."""
        pause, self._next_s = self._next_s, min(self._next_s * 2, self.MAX_S)
        return pause

    def reset(self) -> None:
        self._next_s = self.FIRST_S


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: Literal["direct", "fanout"]


@dataclass(frozen=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str = ""  # a fanout exchange ignores it


@dataclass(frozen=True)
class Topology:
    """What every gateway and worker declares, durable, in this order; the same data on both sides, so their
    arguments can never differ (RabbitMQ refuses a redeclaration with other arguments)."""

    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[Binding, ...]


def request_queue(max_messages: int) -> QueueSpec:
    """Quorum queue with a delivery limit, at-least-once dead-lettering, and a length limit that refuses
    publishes (the publisher gets a nack: 429 at the gateway) instead of dropping old messages."""
    return QueueSpec(
        REQUEST_QUEUE,
        {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": max_messages,
        },
    )


DEAD_QUEUE = QueueSpec(DEAD_LETTER_QUEUE, {"x-queue-type": "quorum"})


def topology(max_messages: int) -> Topology:
    """The shared topology: requests through `blipq` to `blipq.caption`; what that queue dead-letters (over
    the delivery limit, expired) through `blipq.dlx` to `blipq.dead`, which the workers answer."""
    requests = request_queue(max_messages)
    return Topology(
        exchanges=(ExchangeSpec(EXCHANGE, "direct"), ExchangeSpec(DEAD_LETTER_EXCHANGE, "fanout")),
        queues=(requests, DEAD_QUEUE),
        bindings=(Binding(requests.name, EXCHANGE, ROUTING_KEY), Binding(DEAD_QUEUE.name, DEAD_LETTER_EXCHANGE)),
    )


def reply_queue(gateway_id: str) -> QueueSpec:
    """Durable, so replies wait for a gateway that restarts."""
    return QueueSpec(REPLY_QUEUE_PREFIX + gateway_id, {"x-queue-type": "quorum"})


class ReplyError(BaseModel):
    code: str
    message: str


class ReplyImage(BaseModel):
    status: Literal["done", "failed"]
    caption: str | None = None
    error: ReplyError | None = None


class CaptionReply(BaseModel):
    """The body of a reply. `images` are in request order; a request that could not be run at all (not
    JSON, wrong schema, expired, over the delivery limit) has no images and a top-level `error`."""

    id: str = Field(description="The request's correlation_id.")
    status: Literal["succeeded", "failed"]
    images: list[ReplyImage] = Field(default_factory=list)
    error: ReplyError | None = None
    model: str | None = Field(None, description="The checkpoint that captioned the images.")
