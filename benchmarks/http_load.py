"""A light HTTP/1.1 load generator: concurrent keep-alive connections sending prepared requests.

On a 2-core machine the clients share the cores with the server under test, so they must cost little:
the request bytes are built before the clock starts, and a response is read by its Content-Length
with no parsing beyond the status line (a general client such as httpx costs several times more CPU
per request, which would be counted against the server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class LoadResult:
    seconds: float
    latencies_ms: list[float]
    statuses: list[int]


def post_request(host: str, port: int, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _run(host: str, port: int, requests: Sequence[bytes], concurrency: int) -> LoadResult:
    pending = list(reversed(requests))
    latencies: list[float] = []
    statuses: list[int] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while pending:
                request = pending.pop()
                started = time.perf_counter()
                statuses.append(await _exchange(reader, writer, request))
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(requests)))))
    return LoadResult(time.perf_counter() - started, latencies, statuses)


def run_load(host: str, port: int, requests: Sequence[bytes], concurrency: int) -> LoadResult:
    """Send every request once over `concurrency` connections; each connection sends its next when answered."""
    return asyncio.run(_run(host, port, requests, concurrency))
