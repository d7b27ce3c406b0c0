"""What a blocking route adds on top of the job's own time.

Starts a real `blipq serve` (embedded: uvicorn + SQLite + the model on threads) on a free loopback port, sends
single-image POST /captionImageBlocking requests one after another, and for each compares the
client's round trip with the job's own time (finished_at - created_at, recorded by the store).
The difference is the cost of the blocking route: HTTP, validation, storing, waking the
waiting request, and the response.

    python -m benchmarks.blocking_overhead --requests 200
    python -m benchmarks.blocking_overhead --requests 200 --rabbitmq   # gateway + worker over RabbitMQ

With --rabbitmq the server is `blipq serve --broker` on a RabbitMQ node started here, and a
`blipq worker` captions; the job's own time then includes publish, consume, reply and recording.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from blipq.engine_build.synthetic import write_test_checkpoint
from tests.helpers import drawing, encode
from tests.rabbitmq import RabbitNode
from tests.server import Server, WorkerProcess


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a fresh tiny test model)")
    parser.add_argument("--rabbitmq", action="store_true", help="gateway and worker over RabbitMQ")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        model = args.model or write_test_checkpoint(Path(scratch) / "tiny", size="tiny")
        extra: list[str] = []
        if args.rabbitmq:
            node = RabbitNode(Path(scratch) / "node").start()
            stack.callback(node.stop)
            worker = WorkerProcess(model, node.url(), Path(scratch) / "worker.log").start()
            stack.callback(worker.stop)
            extra = ["--broker", node.url()]
        server = Server(model, Path(scratch), *extra).start()
        try:
            body = {"imgb64s": [base64.b64encode(encode(drawing(320, 240, "white", "teal"), "JPEG")).decode()]}
            round_trips, own, overhead = [], [], []
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for _ in range(10):  # warm-up: first model calls and connections
                    client.post("/captionImageBlocking", json=body)
                for _ in range(args.requests):
                    started = time.perf_counter()
                    job_id = client.post("/captionImageBlocking", json=body).json()["id"]
                    elapsed = time.perf_counter() - started
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    job_time = job["finished_at"] - job["created_at"]
                    round_trips.append(elapsed * 1000)
                    own.append(job_time * 1000)
                    overhead.append((elapsed - job_time) * 1000)
        finally:
            server.stop()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    mode = "gateway + worker over RabbitMQ" if args.rabbitmq else "embedded"
    print(f"model: {model}; {mode}; {args.requests} sequential single-image requests\n")
    print("| ms | median | p95 |")
    print("|---|---|---|")
    for name, values in (("round trip", round_trips), ("job's own time", own), ("blocking overhead", overhead)):
        print(f"| {name} | {statistics.median(values):.1f} | {percentile(values, 0.95):.1f} |")


if __name__ == "__main__":
    main()
