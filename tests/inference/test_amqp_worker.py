"""`blipq worker`'s consumer on a real RabbitMQ, driven by an outside publisher written with plain pika from
the README's contract (tests/publisher.py, not blipq's own code)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blipq.contract.images import ImagePolicy
from blipq.contract.options import CaptionOptions
from blipq.inference.amqp_worker import AmqpWorker, BatcherDied
from blipq.inference.batcher import BatcherConfig
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from blipq.inference.fetch import FetchPolicy
from blipq.inference.metrics import InferenceMetrics
from blipq.inference.requests import dead_letter_error
from blipq.inference.settings import InferenceSettings
from tests.conftest import CrawlingHandler
from tests.helpers import pictures
from tests.publisher import OutsidePublisher, request
from tests.rabbitmq import RabbitNode
from tests.server import wait_until


@contextlib.contextmanager
def running_worker(amqp_url: str, engine: CaptionEngine, config: BatcherConfig | None = None) -> Iterator[AmqpWorker]:
    running = AmqpWorker(
        amqp_url, engine, config or BatcherConfig(max_batch=8, batch_wait_ms=100), model_name="tiny",
        max_messages=1000, max_images=16, request_policy=ImagePolicy(max_bytes=1_000_000),
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,))
    thread.start()
    try:
        assert running.connected.wait(30), "the worker did not connect"
        yield running
    finally:  # a failing test must not leave the worker running (the test process would never exit)
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


@pytest.fixture
def worker(amqp_url: str, engine: CaptionEngine) -> Iterator[AmqpWorker]:
    with running_worker(amqp_url, engine) as running:
        yield running


@pytest.fixture
def publisher(amqp_url: str, worker: AmqpWorker) -> Iterator[OutsidePublisher]:
    client = OutsidePublisher(amqp_url)
    yield client
    client.close()


def test_an_outside_publisher_gets_correlated_replies_with_the_engines_captions(
    publisher: OutsidePublisher, engine: CaptionEngine
) -> None:
    images = pictures(3)
    publisher.publish(request(images[:2]), "first")
    publisher.publish(request(images[2:], num_beams=1), "second")
    replies = publisher.replies(2)
    assert replies["first"]["status"] == "succeeded"
    assert [image["caption"] for image in replies["first"]["images"]] == engine.caption(
        [decode_image(image) for image in images[:2]], CaptionOptions()
    )
    assert [image["caption"] for image in replies["second"]["images"]] == engine.caption(
        [decode_image(images[2])], CaptionOptions(num_beams=1)
    )
    assert replies["first"]["model"] == "tiny"


def test_one_image_messages_are_batched_across_messages(publisher: OutsidePublisher, engine: CaptionEngine) -> None:
    images = pictures(8)
    calls_before = engine.generate_calls
    for index, image in enumerate(images):
        publisher.publish(request([image]), f"one-{index}")
    replies = publisher.replies(8)
    assert engine.generate_calls - calls_before < 8
    expected = engine.caption([decode_image(image) for image in images], CaptionOptions())
    assert [replies[f"one-{index}"]["images"][0]["caption"] for index in range(8)] == expected


def test_unreadable_requests_and_bad_images_get_error_replies(publisher: OutsidePublisher) -> None:
    publisher.publish(b"this is not JSON", "not-json")
    publisher.publish(json.dumps({"pictures": []}).encode(), "wrong-schema")
    publisher.publish(request([pictures(1)[0], b"<svg xmlns='http://www.w3.org/2000/svg'/>"]), "bad-image")
    replies = publisher.replies(3)
    for key in ("not-json", "wrong-schema"):
        assert replies[key]["status"] == "failed"
        assert replies[key]["error"]["code"] == "invalid_request"
        assert replies[key]["images"] == []
    mixed = replies["bad-image"]
    assert mixed["status"] == "succeeded"
    assert [image["status"] for image in mixed["images"]] == ["done", "failed"]
    assert mixed["images"][1]["error"]["code"] == "invalid_image"
    assert mixed["images"][1]["error"]["message"].startswith("image 1: not a supported image")


def test_framed_requests_carry_raw_bytes_and_a_bad_frame_gets_an_error_reply(
    publisher: OutsidePublisher, engine: CaptionEngine
) -> None:
    """The framed content type of the contract, built here by hand: a JSON header line, then the bytes."""
    images = pictures(2)
    header = json.dumps({"images": [{"bytes": len(image)} for image in images], "options": {"num_beams": 1}})
    framed = "application/vnd.blipq.framed-request"
    publisher.publish(header.encode() + b"\n" + b"".join(images), "framed", content_type=framed)
    publisher.publish(header.encode() + b"\n" + images[0], "short", content_type=framed)
    replies = publisher.replies(2)
    assert [image["caption"] for image in replies["framed"]["images"]] == engine.caption(
        [decode_image(image) for image in images], CaptionOptions(num_beams=1)
    )
    assert replies["short"]["status"] == "failed"
    assert replies["short"]["error"]["code"] == "invalid_request"


def test_an_expired_request_is_answered_expired(amqp_url: str, engine: CaptionEngine) -> None:
    """A request that waits past its TTL while no worker runs is dead-lettered and answered when one starts."""
    with running_worker(amqp_url, engine):
        pass  # the topology exists from now on
    client = OutsidePublisher(amqp_url)
    try:
        client.publish(request(pictures(1)), "short", expiration="50")
        # Expired with no worker running: it waits in the dead-letter queue for the next worker.
        wait_until(lambda: client.channel.queue_declare("blipq.dead", passive=True).method.message_count == 1)
        with running_worker(amqp_url, engine):
            replies = client.replies(1)
    finally:
        client.close()
    assert replies["short"]["status"] == "failed"
    assert replies["short"]["error"]["code"] == "expired"
    assert replies["short"]["images"] == []


def test_no_reply_to_is_rejected_and_the_worker_keeps_going(publisher: OutsidePublisher) -> None:
    publisher.publish(request(pictures(1)), f"lost-{uuid.uuid4().hex}", reply_to=None)
    publisher.publish(request(pictures(1)), "after")
    assert publisher.replies(1)["after"]["status"] == "succeeded"


def readme_publisher() -> str:
    """The Python example of README's "Publishing to the queue directly", as printed."""
    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Publishing to the queue directly", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_publisher_works_as_printed(
    amqp_url: str, worker: AmqpWorker, engine: CaptionEngine, tmp_path: Path
) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(pictures(1)[0])
    result = subprocess.run(
        [sys.executable, "-c", readme_publisher()],
        env={**os.environ, "AMQP_URL": amqp_url, "IMAGE": str(image)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    caption = engine.caption([decode_image(image.read_bytes())], CaptionOptions())
    assert result.stdout.strip() == f"succeeded {caption}"


def test_the_workers_limits_apply_to_every_publisher(publisher: OutsidePublisher) -> None:
    """Images over max_image_bytes are refused one by one; a message over max_images_per_job as a whole."""
    publisher.publish(request([pictures(1)[0], b"\x89PNG" + bytes(1_100_000)]), "big-image")
    publisher.publish(request(pictures(1) * 17), "too-many")
    replies = publisher.replies(2)
    big = replies["big-image"]
    assert [image["status"] for image in big["images"]] == ["done", "failed"]
    assert big["images"][1]["error"]["code"] == "input_too_large"
    assert "max_image_bytes limit of 1000000" in big["images"][1]["error"]["message"]
    assert (replies["too-many"]["status"], replies["too-many"]["error"]["code"]) == ("failed", "invalid_request")


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("rejected", "invalid_request"),
        ("expired", "expired"),
        ("delivery_limit", "worker_lost"),
        ("maxlen", "invalid_request"),
    ],
)
def test_each_dead_letter_reason_has_its_error_code(reason: str, code: str) -> None:
    headers = {"x-death": [{"reason": reason, "queue": "blipq.caption", "count": 1}]}
    assert dead_letter_error(headers).code == code
    assert dead_letter_error(None).code == "invalid_request"


def test_urls_on_a_crawling_host_fail_at_the_deadline_without_holding_up_other_requests(
    amqp_url: str, engine: CaptionEngine, crawling_server: str
) -> None:
    """Four URL requests whose server sends its headers a byte at a time, then two good requests."""
    config = BatcherConfig(
        max_batch=8, decode_threads=4, fetch=FetchPolicy(timeout_s=3, allow_networks=("127.0.0.1/32",))
    )
    with running_worker(amqp_url, engine, config):
        client = OutsidePublisher(amqp_url)
        try:
            slow = [f"slow-{number}" for number in range(4)]
            for number, correlation_id in enumerate(slow):
                body = {"images": [{"url": f"{crawling_server}/{number}.jpg"}]}
                client.publish(json.dumps(body).encode(), correlation_id)
            for number, image in enumerate(pictures(2)):
                client.publish(request([image]), f"good-{number}")
            started = time.monotonic()
            first_two = client.replies(2, timeout_s=30)
            assert set(first_two) == {"good-0", "good-1"}
            assert time.monotonic() - started < 3  # before the first slow URL's deadline
            rest = client.replies(4, timeout_s=30)
            assert time.monotonic() - started < 10  # two at a time, 3 s each
            for correlation_id in slow:
                [image] = rest[correlation_id]["images"]
                assert image["error"]["code"] == "fetch_failed"
        finally:
            client.close()


def test_a_reply_queue_that_refuses_every_reply_costs_only_its_own_replies(
    publisher: OutsidePublisher, worker: AmqpWorker
) -> None:
    """A publisher whose reply queue takes nothing (`x-max-length` 0, `reject-publish`): its requests and its
    dead letters are settled, counted, and everybody else is still answered, on the same connection."""
    refusing = publisher.channel.queue_declare(
        "", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    ).method.queue
    generation = worker._generation
    publisher.publish(request(pictures(1)), "refused-caption", reply_to=refusing)
    publisher.publish(b"not JSON", "refused-dead-letter", reply_to=refusing)
    publisher.publish(request(pictures(1)), "answered")
    assert publisher.replies(1)["answered"]["status"] == "succeeded"
    refused = worker.metrics.undeliverable_replies.labels(reason="refused")
    deadline = time.monotonic() + 30
    while refused._value.get() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused._value.get() == 2
    assert worker._generation == generation, "the worker reconnected"
    assert not worker._work
    for queue in ("blipq.caption", "blipq.dead"):  # nothing left over to be delivered again
        assert publisher.channel.queue_declare(queue, passive=True).method.message_count == 0
    publisher.publish(request(pictures(1)), "still answered")
    assert publisher.replies(1)["still answered"]["status"] == "succeeded"


def test_a_request_delivered_again_while_its_first_delivery_still_runs_runs_once(
    tmp_path: Path, engine: CaptionEngine, crawling_server: str
) -> None:
    """The broker drops the worker's connection (as it does a channel past consumer_timeout) while a request is
    under way: the copy delivered again is answered by the work already running, not run a second time."""
    node = RabbitNode(tmp_path / "node").start()
    config = BatcherConfig(decode_threads=2, fetch=FetchPolicy(timeout_s=4, allow_networks=("127.0.0.1/32",)))
    try:
        with running_worker(node.url(), engine, config) as worker:
            client = OutsidePublisher(node.url())
            try:
                body = {
                    "images": [
                        {"url": f"{crawling_server}/once.jpg"},
                        {"b64": base64.b64encode(pictures(1)[0]).decode()},
                    ]
                }
                client.publish(json.dumps(body).encode(), "slow-one")
                wait_until(lambda: CrawlingHandler.requests["/once.jpg"] == 1, timeout_s=30)
                generation = worker._generation
                _close_connection(node, "blipq worker")
                wait_until(lambda: worker._generation > generation, timeout_s=30)
                reply = client.replies(1, timeout_s=30)["slow-one"]
                assert [image["status"] for image in reply["images"]] == ["failed", "done"]
                assert reply["images"][0]["error"]["code"] == "fetch_failed"
                assert CrawlingHandler.requests["/once.jpg"] == 1  # fetched once: the copy did not run again
                assert _counts_on(node, "blipq.caption") == 0
            finally:
                client.close()
    finally:
        node.stop()


def _close_connection(node: RabbitNode, name: str) -> None:
    """Close the client connection named `name` (its connection_name property) from the broker's side."""
    listed = subprocess.run(
        node.tool("rabbitmqctl", "list_connections", "pid", "client_properties", "--silent"),
        env=node.env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    [pid] = [line.split("\t")[0] for line in listed.splitlines() if f'"{name}"' in line]
    node.ctl("close_connection", pid, "closed by the test")


def _counts_on(node: RabbitNode, queue: str) -> int:
    """Messages in `queue`, ready or unacked."""
    listed = subprocess.run(
        node.tool("rabbitmqctl", "list_queues", "name", "messages", "--silent"),
        env=node.env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return sum(int(line.split("\t")[1]) for line in listed.splitlines() if line.split("\t")[0] == queue)


def test_a_worker_whose_model_threads_died_stops_with_an_error(
    amqp_url: str, engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something no failure path catches kills the model's thread: the worker stops consuming (and `blipq
    worker` exits non-zero) instead of holding requests it will never answer."""

    def fatal(*args: object) -> None:
        raise SystemExit("simulated: the model's thread is gone")

    worker = AmqpWorker(
        amqp_url, engine, BatcherConfig(), model_name="tiny", max_messages=1000, max_images=16,
        request_policy=ImagePolicy(),
    )  # fmt: skip
    monkeypatch.setattr(worker.batcher.engine, "start_search", fatal)
    monkeypatch.setattr(worker.batcher.engine, "generate_each", fatal)
    failures: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert worker.connected.wait(30)
        client = OutsidePublisher(amqp_url)
        try:
            client.publish(request(pictures(1)), "fatal")
            thread.join(30)
        finally:
            client.close()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert [type(failure) for failure in failures] == [BatcherDied]


def test_the_worker_holds_no_more_request_bytes_than_its_bound(
    amqp_url: str, engine: CaptionEngine, crawling_server: str
) -> None:
    """Prefetch counts messages: with messages of up to 100 kB and 300 kB to hold, a worker whose batches would
    want 16 takes 3 at a time. Six requests whose URL crawls: three wait in the queue while it holds three."""
    config = BatcherConfig(
        max_batch=8, decode_threads=8, fetch=FetchPolicy(timeout_s=3, allow_networks=("127.0.0.1/32",))
    )
    bounded = AmqpWorker(
        amqp_url, engine, config, model_name="tiny", max_messages=1000, max_images=16,
        request_policy=ImagePolicy(max_bytes=1_000_000), max_message_bytes=100_000, max_held_bytes=300_000,
    )  # fmt: skip
    assert (bounded.prefetch.cap, bounded.prefetch.wanted) == (3, 3)
    stop = threading.Event()
    thread = threading.Thread(target=bounded.run, args=(stop,))
    thread.start()
    client = OutsidePublisher(amqp_url)
    try:
        assert bounded.connected.wait(30)
        slow = [f"slow-{number}" for number in range(6)]
        for number, correlation_id in enumerate(slow):
            client.publish(
                json.dumps({"images": [{"url": f"{crawling_server}/{number}.jpg"}]}).encode(), correlation_id
            )
        wait_until(lambda: client.requests_waiting() == 3, timeout_s=10)
        first = client.replies(3, timeout_s=30)  # the first three fail at their deadline...
        rest = client.replies(3, timeout_s=30)  # ...and only then are the other three delivered
        assert set(first) | set(rest) == set(slow)
        oversized = json.dumps({"images": [{"b64": base64.b64encode(b"x" * 100_000).decode()}]}).encode()
        client.publish(oversized, "too-big")
        assert client.replies(1, timeout_s=30)["too-big"]["error"]["code"] == "invalid_request"
    finally:
        client.close()
        stop.set()
        thread.join(60)


def test_big_messages_make_the_worker_hold_fewer_of_them(
    amqp_url: str, engine: CaptionEngine, crawling_server: str
) -> None:
    """A worker of max_batch 4 wants 8 images in hand: eight one-image messages, or two of four images. After
    one four-image request it takes two more (its first one is still in hand), and of five such requests
    (crawling URLs) two wait in the queue instead of all being taken at once."""
    config = BatcherConfig(
        max_batch=4, decode_threads=8, fetch=FetchPolicy(timeout_s=2, allow_networks=("127.0.0.1/32",))
    )
    with running_worker(amqp_url, engine, config) as worker:
        assert worker.prefetch.wanted == 8
        client = OutsidePublisher(amqp_url)
        try:
            ids = [f"four-{number}" for number in range(5)]
            for number, correlation_id in enumerate(ids):
                body = {"images": [{"url": f"{crawling_server}/{number}-{image}.jpg"} for image in range(4)]}
                client.publish(json.dumps(body).encode(), correlation_id)
                if number == 0:  # learnt from the first one
                    wait_until(lambda: worker.prefetch.wanted == 2, timeout_s=10)
            wait_until(lambda: client.requests_waiting() == 2, timeout_s=10)
            replies = client.replies(5, timeout_s=60)
            assert {image["error"]["code"] for reply in replies.values() for image in reply["images"]} == {
                "fetch_failed"
            }
        finally:
            client.close()


def test_blipq_worker_takes_its_limits_from_its_settings(engine: CaptionEngine) -> None:
    settings = InferenceSettings(
        broker_url="amqp://guest:guest@127.0.0.1:1/", max_batch=8, max_images_per_job=7,
        max_message_bytes=1_000_000, max_held_bytes=3_000_000,
    )  # fmt: skip
    worker = AmqpWorker.of(settings, engine, InferenceMetrics())
    assert (worker.prefetch.cap, worker.prefetch.wanted, worker.max_images) == (3, 3, 7)
    assert worker.max_message_bytes == 1_000_000
    roomy = AmqpWorker.of(settings.model_copy(update={"max_held_bytes": 10**9}), engine, InferenceMetrics())
    assert roomy.prefetch.wanted == 16  # two batches of one-image messages


def test_a_requests_part_header_comes_back_unchanged_on_its_reply(publisher: OutsidePublisher) -> None:
    """A publisher that splits its own requests names each part as it likes; the reply carries the name back."""
    publisher.publish(request(pictures(1)), "mine", headers={"blipq-part": "photos 3 of 7"})
    publisher.publish(request(pictures(1)), "plain")
    assert set(publisher.replies(2)) == {"mine", "plain"}
    assert publisher.reply_headers == {"mine": {"blipq-part": "photos 3 of 7"}, "plain": None}
