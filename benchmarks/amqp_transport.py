"""What the RabbitMQ transport costs with the model taken out, and how fast a dead worker's messages move on.

Starts its own `rabbitmq-server` node on free loopback ports (tests/rabbitmq.py), runs the real
`AmqpWorker` (consume, parse, batch, decode, reply with confirms, ack) with an engine that returns a
fixed caption instantly, and a publisher in this process (pika, publisher confirms) that sends
one-image requests (a 64x48 PNG) and counts the replies:

    python -m benchmarks.amqp_transport --messages 5000

Then: a consumer process takes one message without acking and is killed with SIGKILL; the time
until another consumer receives that message again is the redelivery time.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pika
from PIL import Image

from blipq.contract.images import ImagePolicy
from blipq.contract.options import CaptionOptions
from blipq.inference.amqp_worker import AmqpWorker
from blipq.inference.batcher import BatcherConfig
from tests.rabbitmq import RabbitNode


class InstantEngine:
    """The engine's interface with no model behind it: every image is captioned "a test" at once."""

    generate_calls = 0

    def prepare(self, image: Image.Image) -> Image.Image:
        return image

    def generate_each(self, prepared: Sequence[Any], options: CaptionOptions) -> list[list[int]]:
        self.generate_calls += 1
        return [[0] for _ in prepared]

    def decode(self, token_ids: Sequence[int], options: CaptionOptions) -> str:
        return "a test"


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def round_trip(url: str, messages: int, images_per_message: int) -> float:
    """Seconds from the first publish to the last reply."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    replies = channel.queue_declare("", exclusive=True).method.queue
    body = json.dumps({"images": [{"b64": png()}] * images_per_message}).encode()
    started = time.perf_counter()
    for number in range(messages):
        properties = pika.BasicProperties(content_type="application/json", reply_to=replies, correlation_id=str(number))
        channel.basic_publish("blipq", "caption", body, properties)
    for received, (_method, _properties, reply) in enumerate(
        channel.consume(replies, auto_ack=True, inactivity_timeout=60), start=1
    ):
        assert reply is not None, f"timed out after {received - 1} replies"
        if received == messages:
            break
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


HOLD_ONE = """
import sys, time, pika
channel = pika.BlockingConnection(pika.URLParameters(sys.argv[1])).channel()
channel.basic_qos(prefetch_count=1)
channel.queue_declare("redelivery", durable=True, arguments={"x-queue-type": "quorum"})
for method, properties, body in channel.consume("redelivery"):
    print("holding", flush=True)
    time.sleep(3600)
"""


def redelivery_seconds(url: str) -> float:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare("redelivery", durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_publish("", "redelivery", b"work")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_ONE, url], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    killed = time.perf_counter()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    for method, _properties, body in channel.consume("redelivery", inactivity_timeout=30):
        assert body == b"work", "not redelivered within 30 s"
        seconds = time.perf_counter() - killed
        channel.basic_ack(method.delivery_tag)
        break
    connection.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        node = RabbitNode(Path(scratch) / "node").start()
        try:
            engine = InstantEngine()
            worker = AmqpWorker(
                node.url(), engine, BatcherConfig(max_batch=args.max_batch, batch_wait_ms=2),  # type: ignore[arg-type]
                model_name="none", max_messages=100_000, max_images=256, request_policy=ImagePolicy(),
            )  # fmt: skip
            stop = threading.Event()
            thread = threading.Thread(target=worker.run, args=(stop,))
            thread.start()
            assert worker.connected.wait(30)
            round_trip(node.url(), 200, 1)  # warm-up
            rows = []
            for images in (1, 16):
                messages = args.messages if images == 1 else args.messages // 16
                seconds = round_trip(node.url(), messages, images)
                rows.append((images, messages, seconds))
            calls = engine.generate_calls
            stop.set()
            thread.join(60)
            redelivery = [redelivery_seconds(node.url()) for _ in range(3)]
        finally:
            node.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"RabbitMQ node of the Debian package, worker max batch {args.max_batch}, model replaced by a constant\n")
    print("| images per message | messages | seconds | messages/s | images/s |")
    print("|---|---|---|---|---|")
    for images, messages, seconds in rows:
        print(
            f"| {images} | {messages} | {seconds:.2f} | {messages / seconds:.0f} | {images * messages / seconds:.0f} |"
        )
    print(f"\nmodel calls: {calls}")
    times = ", ".join(f"{seconds * 1000:.0f}" for seconds in redelivery)
    print(f"redelivery after SIGKILL of the consumer holding a message: {times} ms")


if __name__ == "__main__":
    main()
