"""Jobs a gateway's store creates and finishes per second, on each backend, in one process on one event loop
(as one gateway runs it).

Each job does what the store does for a one-image job over RabbitMQ, with a read as a poll or a blocking
request makes: `create` (the image's bytes kept until the broker confirms), `published` (the bytes go),
`finish` (its caption), `get`. `--concurrency` jobs are under way at once. CPU is counted twice: this
process's (for SQLite, its writer and reader threads too), and the whole machine's (for PostgreSQL, its server
processes too), both per job.

    python -m benchmarks.store_throughput --jobs 3000 --concurrency 64

PostgreSQL: a database `blipq_bench_<random>` is created through `--postgres-admin` and dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from blipq.contract.messages import ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.store import Store, open_store

IMAGE = ImageInput(data=os.urandom(30_000))  # about a small JPEG


@dataclass(frozen=True)
class Row:
    backend: str
    jobs: int
    seconds: float
    process_cpu_s: float
    machine_cpu_s: float

    def line(self) -> str:
        rate = self.jobs / self.seconds
        return (
            f"| {self.backend} | {self.jobs} | {self.seconds:.2f} | {rate:,.0f} "
            f"| {1000 * self.process_cpu_s / self.jobs:.2f} | {1000 * self.machine_cpu_s / self.jobs:.2f} |"
        )


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent busy since boot (every core; /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def one_job(store: Store) -> None:
    job_id, _ = await store.create([IMAGE], CaptionOptions(), max_pending=100_000)
    await store.published(job_id, keep_images=False)
    await store.finish(job_id, [ImageResult(caption="a cat sitting on a blanket")])
    await store.get(job_id)


async def measure(backend: str, url: str, jobs: int, concurrency: int) -> Row:
    store = open_store(url)
    await store.start(lambda job_id: None)
    try:
        for _ in range(50):  # warm up: connections, statements, pages
            await one_job(store)
        remaining = iter(range(jobs))

        async def client() -> None:
            for _ in remaining:
                await one_job(store)

        started, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_s()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        return Row(backend, jobs, seconds, time.process_time() - cpu, machine_busy_s() - busy)
    finally:
        await store.close()


@contextmanager
def bench_database(admin: str) -> Iterator[str]:
    name = f"blipq_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(admin)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--only", choices=["SQLite", "PostgreSQL"], help="measure one backend (to profile it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, bench_database(args.postgres_admin) as postgres_url:
        urls = {"SQLite": f"sqlite:///{folder}/store.db", "PostgreSQL": postgres_url}
        rows = [
            asyncio.run(measure(backend, url, args.jobs, args.concurrency))
            for backend, url in urls.items()
            if args.only in (None, backend)
        ]
        with psycopg.connect(postgres_url) as connection:
            server = connection.execute("SHOW server_version").fetchone()
    print(f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"psycopg {version('psycopg')}, PostgreSQL {server[0] if server else '?'}, SQLite {sqlite3.sqlite_version}")
    print(f"{args.jobs} jobs of one 30 KB image, {args.concurrency} at once\n")
    print("| store | jobs | seconds | jobs/s | process CPU ms/job | machine CPU ms/job |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
