"""A real RabbitMQ for the tests: BLIPQ_TEST_AMQP_URL if set, else a testcontainers RabbitMQ where a Docker
engine answers, else a `rabbitmq-server` node started here on free loopback ports with its own data dir.

Each test gets a fresh virtual host, so the fixed queue names of the contract never collide. Tests
that stop and restart a broker use a node of their own (`RabbitNode`), never a shared one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from tests.server import free_port, terminate

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RabbitNode:
    """A `rabbitmq-server` node of our own: free ports, its own node name, data and log dirs, and cookie."""

    def __init__(self, root: Path, config: Path | None = None, env: dict[str, str] | None = None) -> None:
        """`config`: a rabbitmq.conf to load (none: the defaults); `env`: more of the server's variables."""
        self.root = root
        self.port = free_port()
        self.name = f"blipq-test-{self.port}@localhost"
        root.mkdir(parents=True, exist_ok=True)
        (root / "enabled_plugins").write_text("[].\n")
        if config is not None:
            shutil.copyfile(config, root / "rabbitmq.conf")
        self.env = {
            **os.environ,
            "HOME": str(root),  # the Erlang cookie lives here, shared by the node and rabbitmqctl
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),  # root/rabbitmq.conf, if there is one
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90) -> RabbitNode:
        server = RABBITMQ_BIN / "rabbitmq-server"
        assert server.exists() or shutil.which("rabbitmq-server"), (
            "no RabbitMQ for the tests: install Debian's rabbitmq-server (bash .ci/run does), "
            "or set BLIPQ_TEST_AMQP_URL"
        )
        command = [str(server) if server.exists() else "rabbitmq-server"]
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.port):
            assert self.process.poll() is None, f"rabbitmq-server exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"rabbitmq-server not listening after {timeout_s} s:\n{self.log_tail()}"
            time.sleep(0.2)
        return self

    def log_tail(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-3000:]

    def ctl(self, *args: str) -> None:
        subprocess.run(self.tool("rabbitmqctl", *args), env=self.env, check=True, capture_output=True, timeout=60)

    def tool(self, name: str, *args: str) -> list[str]:
        """The command line of a RabbitMQ CLI tool (rabbitmqctl, rabbitmq-diagnostics) aimed at this node."""
        path = RABBITMQ_BIN / name
        return [str(path) if path.exists() else name, "-n", self.name, *args]

    def stop(self) -> None:
        """SIGTERM and wait: the node shuts down cleanly and can be started again on the same data."""
        terminate(self.process)

    def url(self, vhost: str = "/") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"


class TestBroker:
    """Hands out a URL to a fresh virtual host per test.

    A node of ours makes them in batches (`batch` at a time): each `rabbitmqctl` call starts an Erlang VM
    (about 2 s of CPU), and one `import_definitions` adds the whole batch."""

    def __init__(self, base_url: str, add_vhosts: Callable[[list[str]], None] | None, batch: int = 1) -> None:
        self.base_url = base_url
        self._add_vhosts = add_vhosts
        self._batch = batch
        self._ready: list[str] = []

    def fresh_url(self) -> str:
        if self._add_vhosts is None:
            return self.base_url  # an outside broker: the tests share its vhost
        if not self._ready:
            self._ready = [f"t-{uuid.uuid4().hex[:12]}" for _ in range(self._batch)]
            self._add_vhosts(self._ready)
        return self.base_url.rsplit("/", 1)[0] + "/" + self._ready.pop()


#: Virtual hosts a node of ours makes per `rabbitmqctl import_definitions` call.
VHOST_BATCH = 24


def vhost_definitions(names: list[str]) -> dict[str, object]:
    """RabbitMQ definitions that add `names` as virtual hosts, each open to guest."""
    return {
        "vhosts": [{"name": name} for name in names],
        "permissions": [
            {"user": "guest", "vhost": name, "configure": ".*", "write": ".*", "read": ".*"} for name in names
        ],
    }


def open_test_broker(root: Path) -> tuple[TestBroker, Callable[[], None]]:
    """The broker for this test session, and how to stop it."""
    if url := os.environ.get("BLIPQ_TEST_AMQP_URL"):
        return TestBroker(url, None), lambda: None
    with contextlib.suppress(Exception):  # no Docker engine: constructing or starting the container raises
        try:
            from testcontainers.community.rabbitmq import RabbitMqContainer
        except ImportError:  # testcontainers before 4.10
            from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13-alpine").start()

        def add_vhosts(names: list[str]) -> None:  # one at a time: a batch would cost a docker exec per name
            for name in names:
                container.exec(["rabbitmqctl", "add_vhost", name])
                container.exec(["rabbitmqctl", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"])

        base = f"amqp://guest:guest@{container.get_container_host_ip()}:{container.get_exposed_port(5672)}/%2F"
        return TestBroker(base, add_vhosts), container.stop
    node = RabbitNode(root).start()
    definitions = root / "vhosts.json"

    def add_node_vhosts(names: list[str]) -> None:
        definitions.write_text(json.dumps(vhost_definitions(names)))
        node.ctl("import_definitions", str(definitions))

    return TestBroker(node.url(), add_node_vhosts, batch=VHOST_BATCH), node.stop
