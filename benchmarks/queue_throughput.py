"""The queue's own cost: images/s through enqueue and claim + complete, model time excluded.

Runs the same workload against the SQLite backend (a file in a temp dir) and the Redis backend
(a redis-server this script starts on a free loopback port, append-only file on with
appendfsync always, like the durability guarantee asks), alternating backends per round.

    python -m benchmarks.queue_throughput --images 2000 --batch 16 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from threading import Thread

from blipq.jobs import CaptionOptions, ImageInput
from blipq.queue import JobQueue, open_queue
from tests.helpers import pictures
from tests.redis_server import RedisServer


def run_round(queue: JobQueue, images: int, per_job: int, batch: int, claimers: int) -> tuple[float, float]:
    payload = [ImageInput(data=data) for data in pictures(per_job)]
    started = time.perf_counter()
    for _ in range(images // per_job):
        queue.enqueue(payload, CaptionOptions())
    enqueue_s = time.perf_counter() - started

    def drain() -> None:
        while claims := queue.claim(batch, lease_s=60):
            for claim in claims:
                queue.complete(claim, "a caption")

    started = time.perf_counter()
    threads = [Thread(target=drain) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    process_s = time.perf_counter() - started
    return images / enqueue_s, images / process_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--per-job", type=int, default=4, help="images per job")
    parser.add_argument("--batch", type=int, default=16, help="images per claim")
    parser.add_argument("--claimers", type=int, default=1, help="threads claiming and completing")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"sqlite": [], "redis": []}
    with tempfile.TemporaryDirectory() as scratch:
        redis_server = RedisServer(Path(scratch) / "redis", append_only=True).start()
        try:
            for round_number in range(args.rounds):
                for backend in ("sqlite", "redis"):
                    url = (
                        f"sqlite:///{scratch}/round{round_number}.db"
                        if backend == "sqlite"
                        else f"{redis_server.url}?prefix=bench{round_number}"
                    )
                    queue = open_queue(url)
                    results[backend].append(run_round(queue, args.images, args.per_job, args.batch, args.claimers))
                    queue.close()
        finally:
            redis_server.stop()
    print(f"machine: {platform.machine()}, {platform.system()}, python {platform.python_version()}")
    print(
        f"{args.images} images in jobs of {args.per_job}, claims of {args.batch}, {args.claimers} claimer(s), "
        f"median of {args.rounds} rounds; SQLite synchronous=FULL, Redis appendfsync always\n"
    )
    print("| backend | enqueue (images/s) | claim + complete (images/s) |")
    print("|---|---|---|")
    for backend, rounds in results.items():
        enqueue = statistics.median(r[0] for r in rounds)
        process = statistics.median(r[1] for r in rounds)
        print(f"| {backend} | {enqueue:,.0f} | {process:,.0f} |")


if __name__ == "__main__":
    main()
