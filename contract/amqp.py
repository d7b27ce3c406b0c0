"""AMQP contract v1: the topology every gateway and worker declares (with identical arguments), and the
reply a worker sends to a request's `reply_to`. Outside services publish and consume by these rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

EXCHANGE = "blipq"  # direct, durable
ROUTING_KEY = "caption"
REQUEST_QUEUE = "blipq.caption"
DEAD_LETTER_EXCHANGE = "blipq.dlx"  # fanout, durable
DEAD_LETTER_QUEUE = "blipq.dead"
REPLY_QUEUE_PREFIX = "blipq.replies."
#: Deliveries of one request beyond the first before it is dead-lettered (RabbitMQ 3.x delivers it N+1 times).
DELIVERY_LIMIT = 3
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, str | int] = field(default_factory=dict)


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
