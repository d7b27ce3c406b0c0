from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from blipq.engine_build.synthetic import write_test_checkpoint
from blipq.inference.engine import CaptionEngine, quiet_transformers
from tests.postgres import fresh_database
from tests.rabbitmq import TestBroker, open_test_broker
from tests.wheels import build_wheel

ROOT = Path(__file__).resolve().parents[1]

# The tests run two at a time (pytest-xdist), each starting servers and workers of its own: many processes
# share few cores. torch's default of one thread per core in each, spinning while it waits for work,
# would take the cores from the others.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the processes the tests start
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # this one


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random-weight) BLIP checkpoint on disk, written by `blipq test-model`'s code."""
    quiet_transformers()
    return write_test_checkpoint(tmp_path_factory.mktemp("tiny-blip"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def blipq_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` builds from this checkout."""
    return build_wheel(ROOT, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def engine(tiny_checkpoint: Path) -> CaptionEngine:
    return CaptionEngine.load(tiny_checkpoint, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on a free loopback port serving files from a folder; yields (base URL, folder)."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class CrawlingHandler(BaseHTTPRequestHandler):
    """Answers every GET with a status line sent one byte every half second, for ever: each read arrives in
    time, the response never does. Counts the requests, by path."""

    requests: ClassVar[Counter[str]] = Counter()

    def do_GET(self) -> None:
        self.requests[self.path] += 1
        try:
            while True:
                for byte in b"HTTP/1.1 200 OK\r\n":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def crawling_server() -> Iterator[str]:
    """The base URL of a loopback server whose every response crawls (`CrawlingHandler`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CrawlingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    """A real RabbitMQ for this session (see tests/rabbitmq.py); fails, not skips, when there is none."""
    broker, stop = open_test_broker(tmp_path_factory.mktemp("rabbitmq"))
    yield broker
    stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test (tests/postgres.py), dropped after."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def amqp_url(rabbitmq: TestBroker) -> str:
    """A URL to a fresh virtual host of the session's broker."""
    return rabbitmq.fresh_url()


@pytest.fixture
def anyio_backend() -> str:
    """`pytest.mark.anyio` tests run on asyncio, as the gateway does."""
    return "asyncio"
