"""`blipq serve --broker` and `blipq worker` as real processes on a real RabbitMQ, under failures: a worker
killed while holding messages, the broker stopped and started again, the gateway killed and restarted, a
request that kills every worker taking it (answered worker_lost after the delivery limit), a worker told to stop
(SIGTERM) with requests in hand, a job over the broker's message size, a memory alarm."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import JobStatus
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.helpers import encode, noise, pictures
from tests.publisher import OutsidePublisher, request
from tests.rabbitmq import RabbitNode
from tests.server import Server, WorkerProcess, get_job, stored_statuses, submit_inputs, submit_job, wait_until


def statuses(server: Server, ids: list[str]) -> list[str]:
    return [get_job(server, job_id)["status"] for job_id in ids]


def assert_captioned(server: Server, ids: list[str], batches: list[list[bytes]], engine: CaptionEngine) -> None:
    for job_id, images in zip(ids, batches, strict=True):
        job: dict[str, Any] = get_job(server, job_id)
        assert job["status"] == "succeeded", job
        expected = engine.caption([decode_image(image) for image in images], CaptionOptions())
        assert [image["caption"] for image in job["images"]] == expected


def test_a_killed_workers_messages_are_finished_by_another(
    amqp_url: str, tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    first = WorkerProcess(tiny_checkpoint, amqp_url, tmp_path / "first.log", "--max-batch", "1").start()
    gateway = Server(tiny_checkpoint, tmp_path, "--broker", amqp_url).start()
    second = WorkerProcess(tiny_checkpoint, amqp_url, tmp_path / "second.log", "--max-batch", "4")
    try:
        batches = [pictures(40)[i : i + 10] for i in range(0, 40, 10)]
        ids = [submit_job(gateway, images) for images in batches]
        wait_until(lambda: "succeeded" in statuses(gateway, ids))
        first.kill()  # it holds the next messages, unacked (prefetch 2)
        assert statuses(gateway, ids).count("succeeded") < len(ids)
        second.start()
        wait_until(lambda: set(statuses(gateway, ids)) == {"succeeded"})
        assert_captioned(gateway, ids, batches, engine)
    finally:
        gateway.stop()
        second.stop()


def test_the_broker_stopped_and_started_again_loses_no_accepted_job(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    node = RabbitNode(tmp_path / "node").start()
    worker = WorkerProcess(tiny_checkpoint, node.url(), tmp_path / "worker.log", "--max-batch", "1").start()
    gateway = Server(tiny_checkpoint, tmp_path, "--broker", node.url()).start()
    try:
        images = pictures(12)
        body = {"imgb64s": [base64.b64encode(image).decode() for image in images]}
        blocking: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: blocking.append(httpx.post(f"{gateway.url}/captionImageBlocking", json=body, timeout=120))
        )
        request.start()
        batches = [pictures(20)[i : i + 5] for i in range(0, 20, 5)]
        ids = [submit_job(gateway, batch) for batch in batches]
        node.stop()
        # Nothing can be answered while the broker is down: what is unfinished now was outstanding at the cut.
        assert set(statuses(gateway, ids)) != {"succeeded"}
        assert not blocking
        refused = httpx.post(f"{gateway.url}/v1/jobs", json={"images": [{"b64": body["imgb64s"][0]}]}, timeout=30)
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "queue_unavailable")
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 503
        assert gateway.process is not None
        assert gateway.process.poll() is None
        assert worker.process is not None
        assert worker.process.poll() is None
        node.start()
        wait_until(lambda: set(statuses(gateway, ids)) == {"succeeded"}, timeout_s=180)
        assert_captioned(gateway, ids, batches, engine)
        request.join(120)
        assert blocking[0].status_code == 200, blocking[0].text
        assert blocking[0].json()["result"] == engine.caption([decode_image(i) for i in images], CaptionOptions())
    finally:
        gateway.stop()
        worker.stop()
        node.stop()


def test_a_restarted_gateway_records_the_replies_that_waited_for_it(
    amqp_url: str, tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    worker = WorkerProcess(tiny_checkpoint, amqp_url, tmp_path / "worker.log", "--max-batch", "4").start()
    identity = ("--broker", amqp_url, "--gateway-id", "gw-restart")
    first = Server(tiny_checkpoint, tmp_path, *identity).start()
    try:
        batches = [pictures(24)[i : i + 8] for i in range(0, 24, 8)]
        ids = [submit_job(first, batch) for batch in batches]
        first.kill()  # replies for these jobs now wait in blipq.replies.gw-restart
        assert set(stored_statuses(tmp_path, ids)) != {JobStatus.SUCCEEDED}, "nothing was outstanding at the kill"
        second = Server(tiny_checkpoint, tmp_path, *identity).start()
        try:
            wait_until(lambda: set(statuses(second, ids)) == {"succeeded"})
            assert_captioned(second, ids, batches, engine)
        finally:
            second.stop()
    finally:
        worker.stop()


def test_a_second_gateway_with_the_same_id_refuses_to_start_and_says_why(
    amqp_url: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    identity = ("--broker", amqp_url, "--gateway-id", "gw-twin")
    first = Server(tiny_checkpoint, tmp_path / "first", *identity).start(ready=False)
    try:
        twin = Server(tiny_checkpoint, tmp_path / "twin", *identity)
        with pytest.raises(RuntimeError, match="exited early") as refused:
            twin.start(ready=False)
        assert twin.process is not None
        assert twin.process.returncode != 0
        assert "another gateway already consumes blipq.replies.gw-twin" in str(refused.value)
        assert "--gateway-id or BLIPQ_GATEWAY_ID" in str(refused.value)
        assert httpx.get(f"{first.url}/healthz", timeout=10).status_code == 200
        assert _counts(amqp_url, "blipq.replies.gw-twin")[1] == 1  # the first one still consumes
    finally:
        first.stop()


def test_two_gateways_and_two_workers_each_gateway_gets_its_own_answers(
    amqp_url: str, tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    workers = [
        WorkerProcess(tiny_checkpoint, amqp_url, tmp_path / f"worker-{n}.log", "--max-batch", "4").start()
        for n in range(2)
    ]
    gateways = [
        Server(tiny_checkpoint, tmp_path / f"gw-{n}", "--broker", amqp_url, "--gateway-id", f"gw-{n}").start()
        for n in range(2)
    ]
    try:
        images = pictures(16)
        batches = {n: [images[i : i + 2] for i in range(8 * n, 8 * n + 8, 2)] for n in range(2)}
        ids = {n: [submit_job(gateways[n], batch) for batch in batches[n]] for n in range(2)}
        for n, gateway in enumerate(gateways):
            wait_until(lambda g=gateway, i=ids[n]: set(statuses(g, i)) == {"succeeded"})
            assert_captioned(gateway, ids[n], batches[n], engine)
            listed = {job["id"] for job in httpx.get(f"{gateway.url}/captionImage", timeout=10).json()}
            assert listed == set(ids[n])  # each gateway lists the jobs it accepted, and only those
        ready = httpx.get(f"{gateways[0].url}/readyz", timeout=10).json()
        assert ready["workers"] == 2
    finally:
        for running in (*gateways, *workers):
            running.stop()


def test_a_message_that_kills_its_worker_each_time_is_answered_worker_lost(
    amqp_url: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Delivered, worker killed, four times (the delivery limit is 3): then dead-lettered and answered."""
    worker_command = ("--max-batch", "1")
    first = WorkerProcess(tiny_checkpoint, amqp_url, tmp_path / "w0.log", *worker_command).start()
    # Consuming comes after the exchange, queues and bindings are declared: killed any earlier, the
    # worker could leave the queue unbound, and the request below would be unroutable.
    wait_until(lambda: "consuming blipq.caption" in (tmp_path / "w0.log").read_text())
    first.kill()
    wait_until(lambda: _counts(amqp_url, "blipq.caption")[1] == 0)
    # A reply queue that outlives this connection: no connection sits idle (missing heartbeats) while
    # the workers start and die below.
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(amqp_url))) as publisher:
        channel = publisher.channel()
        channel.confirm_delivery()  # as README tells publishers: a refused or unroutable request raises
        channel.queue_declare("test.replies")
        body = {"images": [{"b64": base64.b64encode(image).decode()} for image in pictures(40)]}
        properties = pika.BasicProperties(
            content_type="application/json", reply_to="test.replies", correlation_id="poison"
        )
        channel.basic_publish("blipq", "caption", json.dumps(body), properties, mandatory=True)
    for attempt in range(4):
        log = tmp_path / f"w{attempt + 1}.log"
        worker = WorkerProcess(tiny_checkpoint, amqp_url, log, *worker_command).start()
        wait_until(lambda: "consuming blipq.caption" in log.read_text())  # noqa: B023
        wait_until(lambda: _counts(amqp_url, "blipq.caption")[0] == 0)  # delivered to this worker
        worker.kill()
        wait_until(lambda: _counts(amqp_url, "blipq.caption")[1] == 0)  # the broker saw it die
    last = WorkerProcess(tiny_checkpoint, amqp_url, tmp_path / "last.log", *worker_command).start()
    try:
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(amqp_url))) as client:
            consuming = client.channel().consume("test.replies", auto_ack=True, inactivity_timeout=120)
            _method, _properties, reply = next(consuming)
        assert reply is not None, "no reply"
        answer = json.loads(reply)
        assert (answer["id"], answer["status"], answer["error"]["code"]) == ("poison", "failed", "worker_lost")
    finally:
        last.stop()


def test_sigterm_answers_the_requests_the_worker_holds_and_leaves_the_rest_queued(
    amqp_url: str, tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    log = tmp_path / "worker.log"
    worker = WorkerProcess(tiny_checkpoint, amqp_url, log, "--max-batch", "1").start()  # it holds 2 (prefetch)
    try:
        wait_until(lambda: "consuming blipq.caption" in log.read_text())
        with contextlib.closing(OutsidePublisher(amqp_url)) as publisher:
            requests = {f"r{n}": pictures(20)[4 * n : 4 * n + 4] for n in range(5)}  # 4 model calls each
            for correlation_id, images in requests.items():
                publisher.publish(request(images), correlation_id)
            wait_until(lambda: _counts(amqp_url, "blipq.caption")[0] <= 3)  # the worker holds some
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
            assert worker.process.wait(60) == 0
            left, consumers = _counts(amqp_url, "blipq.caption")
            answered = publisher.waiting_replies()
    finally:
        worker.stop()
    assert consumers == 0
    assert answered, "the worker exited without answering what it held"
    assert len(answered) + left == len(requests)  # each request answered, or still queued: none lost or twice
    for correlation_id, reply in answered.items():
        expected = engine.caption([decode_image(image) for image in requests[correlation_id]], CaptionOptions())
        assert [image["caption"] for image in reply["images"]] == expected


def test_a_job_over_the_brokers_message_size_travels_in_parts_and_an_image_over_it_gets_413(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    """RabbitMQ refuses a message over its max_message_size by closing the channel, which fails every publish
    in flight on it: the gateway splits a bigger job into parts under the limit, and refuses an image that
    alone is over it with 413, before publishing."""
    config = tmp_path / "rabbitmq.conf"
    config.write_text("max_message_size = 65536\n")
    node = RabbitNode(tmp_path / "node", config=config).start()
    worker = WorkerProcess(tiny_checkpoint, node.url(), tmp_path / "worker.log").start()
    env = {"BLIPQ_MAX_MESSAGE_BYTES": "65536"}
    gateway = Server(tiny_checkpoint, tmp_path, "--broker", node.url(), env=env).start()
    try:
        big = encode(noise(200, 200, seed=5), "PNG")  # about 120 KB, incompressible
        refused = httpx.post(
            f"{gateway.url}/v1/jobs", json={"images": [{"b64": base64.b64encode(big).decode()}]}, timeout=30
        )
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"]["code"] == "input_too_large"
        assert "BLIPQ_MAX_MESSAGE_BYTES" in refused.json()["error"]["message"]
        several = [encode(noise(100, 100, seed=seed), "PNG") for seed in range(4)]  # about 30 KB each
        assert sum(map(len, several)) > 65536
        job_id = submit_job(gateway, several)  # the connection and its channel are fine
        wait_until(lambda: statuses(gateway, [job_id]) == ["succeeded"])
        assert_captioned(gateway, [job_id], [several], engine)
        listed = httpx.get(f"{gateway.url}/v1/jobs", timeout=10).json()["jobs"]
        assert [job["id"] for job in listed] == [job_id]  # the refused job left nothing behind
    finally:
        gateway.stop()
        worker.stop()
        node.stop()


def test_in_a_memory_alarm_jobs_get_503_readyz_says_why_at_once_and_all_resumes_after(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine, crawling_server: str
) -> None:
    """RabbitMQ stops reading from connections that publish while an alarm lasts. The gateway publishes on a
    connection of its own: a job in the alarm gets 503 at once (the first, as soon as RabbitMQ blocks the
    connection it published on), and /readyz (on the connection that only consumes) answers at once and names
    the alarm. A worker's reply in the alarm waits until it clears, and is recorded then."""
    node = RabbitNode(tmp_path / "node").start()
    fetching = {"BLIPQ_FETCH_ALLOW_NETWORKS": "127.0.0.0/8", "BLIPQ_FETCH_TIMEOUT_S": "3"}
    worker = WorkerProcess(tiny_checkpoint, node.url(), tmp_path / "worker.log", env=fetching).start()
    gateway = Server(tiny_checkpoint, tmp_path, "--broker", node.url()).start()
    body = {"images": [{"b64": base64.b64encode(pictures(1)[0]).decode()}]}
    try:
        before = submit_job(gateway, pictures(1))
        wait_until(lambda: statuses(gateway, [before]) == ["succeeded"])
        crawling = submit_inputs(gateway, [{"url": f"{crawling_server}/slow.jpg"}])  # fails in 3 s
        wait_until(lambda: _counts(node.url(), "blipq.caption")[0] == 0)  # the worker holds it
        node.ctl("set_vm_memory_high_watermark", "0.00001")
        wait_until(lambda: _connection_state(node, "blipq worker") == "blocked", timeout_s=30)  # replying
        assert statuses(gateway, [crawling]) == ["queued"]
        started = time.monotonic()
        first = httpx.post(f"{gateway.url}/v1/jobs", json=body, timeout=30)
        assert first.status_code == 503, first.text
        assert "memory or disk alarm" in first.json()["error"]["message"]
        second = httpx.post(f"{gateway.url}/v1/jobs", json=body, timeout=30)
        ready = httpx.get(f"{gateway.url}/readyz", timeout=30)
        assert time.monotonic() - started < 5  # all known at once, not after the 10 s publish timeout
        assert second.status_code == ready.status_code == 503
        assert "a memory or disk alarm on the broker" in ready.json()["error"]["message"]
        assert [job["id"] for job in httpx.get(f"{gateway.url}/v1/jobs", timeout=10).json()["jobs"]] == [
            before,
            crawling,
        ]
        node.ctl("set_vm_memory_high_watermark", "0.4")
        wait_until(lambda: statuses(gateway, [crawling]) == ["failed"], timeout_s=30)
        assert get_job(gateway, crawling)["images"][0]["error"]["code"] == "fetch_failed"
        wait_until(lambda: httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200, timeout_s=30)
        images = pictures(3)
        after = submit_job(gateway, images)
        wait_until(lambda: statuses(gateway, [after]) == ["succeeded"])
        assert_captioned(gateway, [after], [images], engine)
    finally:
        gateway.stop()
        worker.stop()
        node.stop()


def _connection_state(node: RabbitNode, name: str) -> str | None:
    """The state (running, blocking, blocked...) of the client connection named `name`."""
    listed = subprocess.run(
        node.tool("rabbitmqctl", "list_connections", "client_properties", "state", "--silent"),
        env=node.env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return next((line.rsplit("\t", 1)[1] for line in listed.splitlines() if f'"{name}"' in line), None)


def _counts(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue."""
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(url))) as connection:
        declared = connection.channel().queue_declare(queue, passive=True).method
    return int(declared.message_count), int(declared.consumer_count)
