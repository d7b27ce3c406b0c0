"""The served path against the engine, with the CPU each process spends per image.

Meant for the regime where the model is cheap and the work around it decides: the tiny model on the CPU
stands in for a fast GPU (`--torch-threads 1`, as beside a GPU), or the real shapes on a GPU. Each row
runs in processes of its own; rounds alternate the rows and the table gives the median rate.

  engine     CaptionEngine through `blipq caption`'s pipeline in one process (decode threads, --batch)
  embedded   `blipq serve`; --concurrency clients each POST /v1/captions with one image, answered in turn
  rabbitmq   `blipq serve --broker` + `blipq worker` + a RabbitMQ node of its own, the same clients
  worker     `blipq worker` alone on a backlog: one-image framed messages queued while it is stopped, then
             the clock runs from its resumption to the last reply (counted here)
Scaling: engine, worker and embedded on 1 CPU and on --cpus (taskset). Fast decode: the engine row with
`--fast-decode`, and the share of its captions equal to the full decode's. Every caption is forced to
--tokens tokens. "model thread" is the CPU of the thread driving the model (Python, kernel launches);
"outside the model" is the rest of that process: decoding, requests, the broker client (and, on the CPU
with more than one torch thread, torch's own worker threads running the model's operations).

    python -m benchmarks.throughput --served --size tiny --images 240 --torch-threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.http_load import post_request, run_load
from benchmarks.inputs import forced_length
from benchmarks.processes import pinned, session_cpu_seconds


@dataclass
class Row:
    name: str
    cpus: int
    images: int
    seconds: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds while timed
    model_cpu_s: float | None = None  # the model thread's CPU while timed
    model_process: str = ""  # the process the model thread belongs to
    batches: float | None = None  # model calls while timed
    captions: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def engine_row(args: argparse.Namespace, paths: list[Path], cpus: int, fast_decode: bool) -> Row:
    """In this (sub)process: the engine over every image, after a warm-up batch."""
    import os

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])  # before torch picks its thread count
    import resource

    from blipq.contract.images import ImagePolicy
    from blipq.contract.options import CaptionOptions
    from blipq.inference.engine import CaptionEngine, quiet_transformers
    from blipq.inference.offline import caption_sources

    quiet_transformers()
    engine = CaptionEngine.load(args.model_dir, device=args.device, dtype=args.dtype, torch_threads=args.torch_threads)
    length = forced_length(args.model_dir, args.tokens)
    options = CaptionOptions(num_beams=args.beams, max_length=length, min_length=length)
    blobs = {str(path): path.read_bytes() for path in paths}
    model_cpu = [0.0, 0]  # CPU of generate calls, their number
    generate_each = engine.generate_each

    def measured(prepared, options):  # type: ignore[no-untyped-def]
        started = time.thread_time()
        try:
            return generate_each(prepared, options)
        finally:
            model_cpu[0] += time.thread_time() - started
            model_cpu[1] += 1

    engine.generate_each = measured  # type: ignore[method-assign]

    def run(sources: list[str]) -> list[str]:
        rows = caption_sources(
            engine, sources, options, read=blobs.__getitem__, policy=ImagePolicy(), batch_size=args.batch,
            decode_threads=max(2, cpus), fast_decode=fast_decode,
        )  # fmt: skip
        return [row.caption or "" for row in rows]

    sources = [str(path) for path in paths]  # the files repeat: each occurrence is captioned
    run(sources[: args.batch])
    model_cpu[:] = [0.0, 0]
    cpu_started, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    captions = run(sources)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_started.ru_utime - cpu_started.ru_stime
    name = "engine, fast decode" if fast_decode else "engine"
    return Row(name, cpus, len(paths), seconds, {"engine": cpu}, model_cpu[0], "engine", model_cpu[1], captions)


def engine_in_subprocess(args: argparse.Namespace, cpus: int, fast_decode: bool = False) -> Row:
    command = [
        sys.executable, "-m", "benchmarks.served", "--one", "engine", "--cpus", str(cpus), "--size", args.size,
        "--images", str(args.images), "--tokens", str(args.tokens), "--beams", str(args.beams), "--device",
        args.device, "--dtype", args.dtype, "--batch", str(args.batch), "--torch-threads", str(args.torch_threads),
        *(["--fast-decode"] if fast_decode else []),
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise RuntimeError(f"the engine row failed:\n{output.stderr[-4000:]}")
    return Row(**json.loads(output.stdout.strip().splitlines()[-1]))


def model_metrics(url: str) -> dict[str, float]:
    import httpx

    wanted = ("blipq_batch_size_count", "blipq_model_cpu_seconds_total")
    text = httpx.get(url, timeout=30).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(wanted)}


def model_options(args: argparse.Namespace) -> list[str]:
    """The flags every process running the model gets here."""
    return ["--max-batch", str(args.batch), "--dtype", args.dtype, "--torch-threads", str(args.torch_threads)]


def start_worker(args: argparse.Namespace, broker_url: str, log: Path, cpus: int | None, metrics_port: int) -> Any:
    """A `blipq worker` on --device, pinned to `cpus`, serving its metrics on `metrics_port`."""
    from tests.server import WorkerProcess

    worker = WorkerProcess(args.model_dir, broker_url, log, *model_options(args), "--metrics-port", str(metrics_port))
    worker.command = pinned(worker.command, cpus)
    worker.command[worker.command.index("--device") + 1] = args.device
    return worker.start()


def served_row(args: argparse.Namespace, paths: list[Path], mode: str, cpus: int | None, scratch: Path) -> Row:
    """`blipq serve` (embedded, or with a worker and a broker) under the clients; `cpus` pins the model's process."""
    from tests.rabbitmq import RabbitNode
    from tests.server import Server, free_port

    processes: dict[str, subprocess.Popen[bytes]] = {}
    node, worker, metrics_port = None, None, free_port()
    extra: list[str] = []
    if mode == "rabbitmq":
        node = RabbitNode(scratch / "rabbit").start()
        extra = ["--broker", node.url()]
        worker = start_worker(args, node.url(), scratch / "worker.log", cpus, metrics_port)
        processes["worker"] = worker.process
    # a slow model (BLIP base on a CPU) takes longer than blocking requests wait by default
    patient = {"BLIPQ_BLOCKING_TIMEOUT_S": "3600"}
    server = Server(args.model_dir, scratch, *extra, *([] if mode == "rabbitmq" else model_options(args)), env=patient)
    server.command[server.command.index("--device") + 1] = args.device
    if mode == "embedded":
        server.command = pinned(server.command, cpus)
    server.start(timeout_s=900)
    processes["gateway" if mode == "rabbitmq" else "server"] = server.process  # type: ignore[assignment]
    if node is not None:
        assert node.process is not None
        processes["broker"] = node.process
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if mode == "rabbitmq" else f"{server.url}/metrics"
    try:
        length = forced_length(args.model_dir, args.tokens)
        options = {"num_beams": args.beams, "max_length": length, "min_length": length}
        import pybase64

        requests = [
            post_request("127.0.0.1", server.port, "/v1/captions", json.dumps(
                {"images": [{"b64": pybase64.b64encode(path.read_bytes()).decode()}], "options": options}).encode())
            for path in paths
        ]  # fmt: skip
        warm = run_load("127.0.0.1", server.port, requests[: args.batch], args.concurrency)
        assert set(warm.statuses) == {200}, warm.statuses
        before_cpu = {name: session_cpu_seconds(process.pid) for name, process in processes.items()}
        before = model_metrics(metrics_url)
        load = run_load("127.0.0.1", server.port, requests, args.concurrency)
        after = model_metrics(metrics_url)
        cpu = {name: session_cpu_seconds(process.pid) - before_cpu[name] for name, process in processes.items()}
    finally:
        server.stop()
        if worker is not None:
            worker.stop()
        if node is not None:
            node.stop()
    assert set(load.statuses) == {200}, sorted(set(load.statuses))
    return Row(
        mode, cpus or 0, len(paths), load.seconds, cpu,
        after["blipq_model_cpu_seconds_total"] - before["blipq_model_cpu_seconds_total"],
        "worker" if mode == "rabbitmq" else "server",
        after["blipq_batch_size_count"] - before["blipq_batch_size_count"],
    )  # fmt: skip


def worker_row(args: argparse.Namespace, paths: list[Path], cpus: int | None, scratch: Path) -> Row:
    """`blipq worker` fed straight from the queue: one-image framed messages waiting in it, replies counted here."""
    import pika

    from blipq.contract.framing import FRAMED_CONTENT_TYPE, frame_request
    from blipq.contract.messages import ImageInput
    from blipq.contract.options import CaptionOptions
    from tests.rabbitmq import RabbitNode
    from tests.server import free_port, wait_until

    length = forced_length(args.model_dir, args.tokens)
    options = CaptionOptions(num_beams=args.beams, max_length=length, min_length=length)
    bodies = [frame_request([ImageInput(data=path.read_bytes())], options) for path in paths]
    node = RabbitNode(scratch / "rabbit").start()
    port = free_port()
    worker = start_worker(args, node.url(), scratch / "worker.log", cpus, port)
    try:
        channel = pika.BlockingConnection(pika.URLParameters(node.url())).channel()
        replies = channel.queue_declare("", exclusive=True).method.queue

        def publish_and_collect(messages: list[bytes]) -> float:
            # The queue is filled while the worker is stopped, and the clock runs from its resumption to the
            # last reply: the worker's rate on a backlog, without this publisher's CPU competing for its cores.
            assert worker.process is not None
            os.kill(worker.process.pid, signal.SIGSTOP)
            try:
                for number, body in enumerate(messages):
                    properties = pika.BasicProperties(
                        content_type=FRAMED_CONTENT_TYPE, reply_to=replies, correlation_id=str(number)
                    )
                    channel.basic_publish("blipq", "caption", body, properties)
            finally:
                os.kill(worker.process.pid, signal.SIGCONT)
            started = time.perf_counter()
            for received, (_method, _properties, reply) in enumerate(
                channel.consume(replies, auto_ack=True, inactivity_timeout=600), start=1
            ):
                assert reply is not None, f"no reply after {received - 1}"
                assert b'"succeeded"' in reply, reply
                if received == len(messages):
                    break
            channel.cancel()
            return time.perf_counter() - started

        wait_until(lambda: _consuming(node.url()), timeout_s=900)
        publish_and_collect(bodies[: args.batch])
        assert worker.process is not None
        assert node.process is not None
        before_cpu = {
            name: session_cpu_seconds(p.pid) for name, p in (("worker", worker.process), ("broker", node.process))
        }
        before = model_metrics(f"http://127.0.0.1:{port}/metrics")
        seconds = publish_and_collect(bodies)
        after = model_metrics(f"http://127.0.0.1:{port}/metrics")
        cpu = {
            name: session_cpu_seconds(p.pid) - before_cpu[name]
            for name, p in (("worker", worker.process), ("broker", node.process))
        }
    finally:
        worker.stop()
        node.stop()
    return Row(
        "worker", cpus or 0, len(paths), seconds, cpu,
        after["blipq_model_cpu_seconds_total"] - before["blipq_model_cpu_seconds_total"], "worker",
        after["blipq_batch_size_count"] - before["blipq_batch_size_count"],
    )  # fmt: skip


def _consuming(url: str) -> bool:
    """A worker consumes the request queue (so the topology exists too)."""
    import pika
    import pika.exceptions

    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError:
        return False
    try:
        declared = connection.channel().queue_declare("blipq.caption", passive=True)
        return bool(declared.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:  # not declared yet
        return False
    finally:
        if connection.is_open:
            connection.close()


def run(args: argparse.Namespace, paths: list[Path]) -> str:
    """Every row over --rounds alternating rounds; returns the report (Markdown)."""
    cpus = args.cpus
    broker = _rabbitmq_installed()
    plan: list[tuple[str, int | None]] = [("engine", cpus), ("embedded", cpus)]
    plan += [("rabbitmq", cpus)] if broker else []
    if args.scaling:
        plan += [("engine", 1), ("embedded", 1)]
        plan += [("worker", 1), ("worker", cpus)] if broker else []
    if args.fast_decode_row:
        plan += [("engine, fast decode", cpus)]
    runs: dict[tuple[str, int], list[Row]] = {}
    for round_number in range(args.rounds):
        for name, pin in plan if round_number % 2 == 0 else list(reversed(plan)):
            with tempfile.TemporaryDirectory(dir=".bench") as scratch:
                row = _run_one(args, paths, name, pin, Path(scratch))
            runs.setdefault((name, pin or 0), []).append(row)
            print(f"round {round_number + 1}: {name} on {pin} CPUs: {row.rate:.1f} img/s", file=sys.stderr)
    return report(args, runs) + ("" if broker else "\nNo rabbitmq-server on this machine: no RabbitMQ rows.\n")


def _rabbitmq_installed() -> bool:
    import shutil

    from tests.rabbitmq import RABBITMQ_BIN

    return (RABBITMQ_BIN / "rabbitmq-server").exists() or shutil.which("rabbitmq-server") is not None


def _run_one(args: argparse.Namespace, paths: list[Path], name: str, cpus: int | None, scratch: Path) -> Row:
    if name.startswith("engine"):
        return engine_in_subprocess(args, cpus or args.cpus, fast_decode="fast" in name)
    if name == "worker":
        return worker_row(args, paths, cpus, scratch)
    return served_row(args, paths, name, cpus, scratch)


def report(args: argparse.Namespace, runs: dict[tuple[str, int], list[Row]]) -> str:
    def rate(key: tuple[str, int]) -> float:
        return statistics.median(row.rate for row in runs[key])

    engine = rate(("engine", args.cpus))
    lines = [
        "| row | CPUs | img/s | x engine | CPU ms per image, by process | model thread | outside the model "
        "| mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, rows in runs.items():
        row = rows[0]
        per_image = {name: 1000 * statistics.median(r.cpu_s[name] for r in rows) / row.images for name in row.cpu_s}
        model = 1000 * statistics.median(r.model_cpu_s or 0 for r in rows) / row.images
        outside = per_image.get(row.model_process, 0) - model
        batch = statistics.median(row.images / (r.batches or 1) for r in rows)
        spent = ", ".join(f"{name} {value:.1f}" for name, value in per_image.items())
        lines.append(
            f"| {key[0]} | {key[1]} | {rate(key):.3g} | {rate(key) / engine:.2f} | {spent} | {model:.1f} "
            f"| {outside:.1f} | {batch:.1f} |"
        )
    notes = []
    for name in ("engine", "worker", "embedded"):
        if (name, 1) in runs and (name, args.cpus) in runs:
            notes.append(f"- {name}: {rate((name, args.cpus)) / rate((name, 1)):.2f}x on {args.cpus} CPUs against 1")
    if ("engine, fast decode", args.cpus) in runs:
        exact, fast = runs[("engine", args.cpus)][0].captions, runs[("engine, fast decode", args.cpus)][0].captions
        same = sum(a == b for a, b in zip(exact, fast, strict=True))
        notes.append(f"- fast decode: {same}/{len(exact)} captions equal to the full decode's")
    return "\n".join([*lines, "", *notes]) + "\n"


def main() -> None:
    """The engine row in a process of its own (`--one engine`), as `engine_in_subprocess` starts it."""
    from benchmarks.inputs import checkpoint, make_inputs
    from benchmarks.throughput import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    add_arguments(parser)
    parser.add_argument("--one", choices=["engine"], help=argparse.SUPPRESS)
    parser.add_argument("--fast-decode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model_dir = checkpoint(args.size)
    paths = make_inputs(min(args.images, 48))
    paths = [paths[index % len(paths)] for index in range(args.images)]
    from blipq.inference.engine import quiet_transformers

    quiet_transformers()
    row = engine_row(args, paths, args.cpus, args.fast_decode)
    print(json.dumps(asdict(row)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this regime reads (throughput.py adds them to its own)."""
    import os

    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)), help="CPUs for the model's process")
    parser.add_argument("--batch", type=int, default=16, help="max batch (engine batch size, --max-batch served)")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="as blipq's --torch-threads (1 stands in for a GPU)"
    )
    parser.add_argument("--no-scaling", dest="scaling", action="store_false", help="leave out the 1-CPU rows")
    parser.add_argument("--no-fast-decode", dest="fast_decode_row", action="store_false", help="leave out that row")


if __name__ == "__main__":
    main()
