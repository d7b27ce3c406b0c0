"""The CPU compose deployment run without Docker: each service's command, with its image's ENV and the
compose file's environment, as a process on this machine, in compose's start order.

- rabbitmq: Debian's rabbitmq-server with deploy/rabbitmq/rabbitmq.conf and the compose user and
  password; the compose health check answers, and the settings are loaded.
- engine-build (CPU overlay: `download`): fetches the weights into the checkpoints folder from a
  loopback server answering the Hugging Face hub's API.
- gateway and inference: the images' ENTRYPOINT + CMD; their health checks pass, and a caption goes
  through the gateway, RabbitMQ and the worker, with an API key from the environment.

Only what Docker itself does is left out: building the images, networking and the GPU reservation.
Host names and ports change (rabbitmq:5672 becomes this node's loopback port; 0.0.0.0 becomes
127.0.0.1; ports are free ones), and so do the /checkpoints and /data paths.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.deploy.compose import ROOT, effective
from tests.deploy.dockerfiles import read_dockerfile
from tests.engine_build.hub_server import HubServer
from tests.helpers import pictures
from tests.rabbitmq import RabbitNode
from tests.server import free_port, terminate, wait_until

HUB_ID = "blipq-tests/tiny-blip"
GATEWAY = read_dockerfile(ROOT / "deploy" / "gateway.Dockerfile")
INFERENCE = read_dockerfile(ROOT / "deploy" / "inference.Dockerfile")


def blipq(argv: list[str]) -> list[str]:
    """An image's `blipq …` command line, run with this interpreter."""
    assert argv[0] == "blipq"
    return [sys.executable, "-m", "blipq", *argv[1:]]


@pytest.fixture
def password() -> str:
    return secrets.token_hex(12)


@pytest.fixture
def compose(password: str) -> dict[str, dict[str, object]]:
    env = {"RABBITMQ_PASSWORD": password, "BLIPQ_API_KEYS": "deploy-test-key", "BLIPQ_MODEL": HUB_ID}
    services: dict[str, dict[str, object]] = effective(["docker-compose.yml", "deploy/compose.cpu.yml"], env)[
        "services"
    ]
    return services


@pytest.fixture
def rabbitmq(tmp_path: Path, compose: dict[str, dict[str, object]]) -> Iterator[RabbitNode]:
    settings = compose["rabbitmq"]["environment"]
    assert isinstance(settings, dict)
    node = RabbitNode(tmp_path / "rabbitmq", config=ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf", env=settings)
    node.start()
    yield node
    node.stop()


def test_the_cpu_deployment_captions_end_to_end(
    rabbitmq: RabbitNode, compose: dict[str, dict[str, object]], tiny_checkpoint: Path, tmp_path: Path,
    engine: CaptionEngine,
) -> None:  # fmt: skip
    # rabbitmq: the compose health check, and our settings in force
    healthcheck = compose["rabbitmq"]["healthcheck"]
    assert isinstance(healthcheck, dict)
    check = rabbitmq.tool(*healthcheck["test"][1:])
    wait_until(lambda: subprocess.run(check, env=rabbitmq.env, capture_output=True).returncode == 0, timeout_s=60)
    for key, value in (("consumer_timeout", "900000"), ("max_message_size", "33554432")):
        answer = subprocess.run(
            rabbitmq.tool("rabbitmqctl", "eval", f"application:get_env(rabbit, {key})."),
            env=rabbitmq.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert answer.stdout.strip() == f"{{ok,{value}}}"

    def environment(image_env: dict[str, str], service: str, **overrides: str) -> dict[str, str]:
        compose_env = compose[service].get("environment", {})
        assert isinstance(compose_env, dict)
        env = {**os.environ, **image_env, **{key: str(value) for key, value in compose_env.items()}, **overrides}
        if "BLIPQ_BROKER_URL" in env:
            env["BLIPQ_BROKER_URL"] = env["BLIPQ_BROKER_URL"].replace("@rabbitmq:5672/", f"@127.0.0.1:{rabbitmq.port}/")
        return env

    checkpoints = tmp_path / "checkpoints"
    paths = {"BLIPQ_CHECKPOINTS_DIR": str(checkpoints)}
    # engine-build, CPU overlay: the first start downloads the weights
    with HubServer(HUB_ID, tiny_checkpoint) as hub:
        hub_env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1"}
        env = environment(INFERENCE.environment(paths), "engine-build", **hub_env)
        command = compose["engine-build"]["command"]
        assert isinstance(command, list)
        build = subprocess.run(blipq(["blipq", *command]), env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    assert (checkpoints / HUB_ID / "model.safetensors").is_file()

    metrics_port, gateway_port = free_port(), free_port()
    worker_env = environment(
        INFERENCE.environment({**paths, "BLIPQ_METRICS_PORT": str(metrics_port)}), "inference", HF_HUB_OFFLINE="1"
    )
    gateway_env = environment(
        GATEWAY.environment(
            {
                "BLIPQ_HOST": "127.0.0.1",
                "BLIPQ_PORT": str(gateway_port),
                "BLIPQ_STORE": f"sqlite:///{tmp_path}/data/blipq.db",
            }
        ),
        "gateway",
    )
    (tmp_path / "data").mkdir()
    logs = [(tmp_path / f"{name}.log").open("wb") for name in ("worker", "gateway")]
    worker = subprocess.Popen(blipq([*INFERENCE.entrypoint, *INFERENCE.cmd]), env=worker_env,
                              stdout=logs[0], stderr=logs[0], start_new_session=True)  # fmt: skip
    gateway = subprocess.Popen(blipq([*GATEWAY.entrypoint, *GATEWAY.cmd]), env=gateway_env,
                               stdout=logs[1], stderr=logs[1], start_new_session=True)  # fmt: skip
    try:
        for image, env in ((INFERENCE, worker_env), (GATEWAY, gateway_env)):
            health = blipq(image.healthcheck)
            wait_until(lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0, timeout_s=120)  # noqa: B023
        url = f"http://127.0.0.1:{gateway_port}"
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout_s=60)
        image_bytes = pictures(1)[0]
        body = {"imgb64s": [base64.b64encode(image_bytes).decode()]}
        assert httpx.post(f"{url}/captionImageBlocking", json=body, timeout=60).status_code == 401
        answer = httpx.post(
            f"{url}/captionImageBlocking", json=body, headers={"Authorization": "Bearer deploy-test-key"}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == engine.caption([decode_image(image_bytes)], CaptionOptions())
    finally:
        terminate(gateway)
        terminate(worker)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
