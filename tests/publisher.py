"""What another service does with blipq's queue, written with plain pika from README's AMQP contract (not with
blipq's own code): publish caption requests and read the correlated replies."""

from __future__ import annotations

import base64
import json
from typing import Any

import pika


class OutsidePublisher:
    """What another service does: publish to exchange `blipq` with routing key `caption`, its own reply queue
    as reply_to and a correlation_id of its choice; read the replies from its queue."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.reply_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.reply_headers: dict[str, dict[str, Any] | None] = {}  # by correlation_id, as the replies came

    def publish(self, body: bytes, correlation_id: str, **properties: Any) -> None:
        self.channel.basic_publish(
            "blipq",
            "caption",
            body,
            pika.BasicProperties(
                content_type=properties.pop("content_type", "application/json"),
                delivery_mode=2,
                reply_to=properties.pop("reply_to", self.reply_queue),
                correlation_id=correlation_id,
                **properties,
            ),
            mandatory=True,
        )

    def replies(self, count: int, timeout_s: float = 60) -> dict[str, dict[str, Any]]:
        """Waits for `count` replies, by correlation_id."""
        found: dict[str, dict[str, Any]] = {}
        for _method, properties, body in self.channel.consume(self.reply_queue, inactivity_timeout=timeout_s):
            assert body is not None, f"timed out with {len(found)} of {count} replies"
            found[properties.correlation_id] = _reply(properties, body)
            self.reply_headers[properties.correlation_id] = properties.headers
            if len(found) == count:
                break
        self.channel.cancel()
        return found

    def waiting_replies(self) -> dict[str, dict[str, Any]]:
        """The replies in the reply queue now, by correlation_id, without waiting for more."""
        found: dict[str, dict[str, Any]] = {}
        while (message := self.channel.basic_get(self.reply_queue, auto_ack=True))[0] is not None:
            _method, properties, body = message
            found[properties.correlation_id] = _reply(properties, body)
        return found

    def requests_waiting(self) -> int:
        """Requests in `blipq.caption` that no worker holds yet."""
        return int(self.channel.queue_declare("blipq.caption", passive=True).method.message_count)

    def close(self) -> None:
        self.connection.close()


def _reply(properties: pika.BasicProperties, body: bytes) -> dict[str, Any]:
    assert properties.content_type == "application/json"
    reply: dict[str, Any] = json.loads(body)
    assert reply["id"] == properties.correlation_id
    return reply


def request(images: list[bytes], **options: object) -> bytes:
    body = {"images": [{"b64": base64.b64encode(image).decode()} for image in images], "options": options}
    return json.dumps(body).encode()
