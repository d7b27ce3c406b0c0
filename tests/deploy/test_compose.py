"""The compose files, as `docker compose` would read them (tests/deploy/compose.py): valid Compose,
secrets only from the environment, real commands, options and settings, and the wiring the README
promises (health-gated start order, one GPU per worker, the CPU and scale-out overlays)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from blipq.gateway.settings import GatewaySettings
from tests.deploy.checks import check_blipq_command, check_environment
from tests.deploy.compose import ROOT, MissingVariable, effective, raw
from tests.deploy.dockerfiles import read_dockerfile

ENV = {"RABBITMQ_PASSWORD": "from-the-env-file", "POSTGRES_PASSWORD": "pg-from-the-env", "BLIPQ_API_KEYS": "k1,k2"}
BASE = ["docker-compose.yml"]
CPU = [*BASE, "deploy/compose.cpu.yml"]
SCALE = [*BASE, "deploy/compose.scale.yml"]
FILE_SETS = {"base": BASE, "cpu": CPU, "scale": SCALE}


def ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in config["services"].items() if "build" in service}


def gpus(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return devices.get("devices", []) if isinstance(devices, dict) else []


@pytest.mark.parametrize("files", FILE_SETS.values(), ids=list(FILE_SETS))
def test_every_blipq_service_names_real_commands_settings_and_mounts(files: list[str]) -> None:
    config = effective(files, ENV)
    for name, service in ours(config).items():
        where = f"{' + '.join(files)}: service {name}"
        dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
        image = read_dockerfile(dockerfile)
        assert set(service["build"].get("args", {})) <= set(image.args), f"{where}: unknown build args"
        check_blipq_command(service.get("command", image.cmd), where)
        check_environment(image.environment(service.get("environment", {})), where)
        healthcheck = service.get("healthcheck", {})
        if not healthcheck.get("disable"):
            test = healthcheck.get("test", ["CMD", *image.healthcheck])
            assert test[:2] == ["CMD", "blipq"], f"{where}: health check {test}"
            check_blipq_command(test[2:], f"{where} health check")
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target in image.volumes, f"{where}: {target} is not a volume of {dockerfile.name}"
            assert source in config["volumes"], f"{where}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in config["services"], f"{where}: depends on a missing {dependency}"


def test_without_the_broker_password_compose_refuses_to_start() -> None:
    with pytest.raises(MissingVariable, match="RABBITMQ_PASSWORD"):
        effective(BASE, {})
    assert (ROOT / "deploy" / "example.env").read_text().count("RABBITMQ_PASSWORD=") == 1
    assert "/.env" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("file", ["docker-compose.yml", "deploy/compose.cpu.yml", "deploy/compose.scale.yml"])
def test_secrets_come_from_the_environment_never_literals(file: str) -> None:
    for name, service in raw(file)["services"].items():
        environment = service.get("environment", {})
        for key in ("BLIPQ_BROKER_URL", "RABBITMQ_DEFAULT_PASS"):
            if key in environment:
                assert "${RABBITMQ_PASSWORD:?" in environment[key], f"{file} {name}: {key} is a literal"
        for key in ("BLIPQ_STORE", "POSTGRES_PASSWORD"):
            if key in environment and not environment[key].startswith("sqlite"):
                assert "${POSTGRES_PASSWORD:?" in environment[key], f"{file} {name}: {key} is a literal"
        if "BLIPQ_API_KEYS" in environment:
            assert environment["BLIPQ_API_KEYS"].startswith("${BLIPQ_API_KEYS"), f"{file} {name}: literal API keys"
    config = effective([*BASE, file] if file != "docker-compose.yml" else BASE, ENV)
    for service in ours(config).values():
        if "BLIPQ_BROKER_URL" in service.get("environment", {}):
            assert service["environment"]["BLIPQ_BROKER_URL"] == "amqp://blipq:from-the-env-file@rabbitmq:5672/"


def test_rabbitmq_is_pinned_with_management_health_check_data_and_our_config() -> None:
    rabbitmq = effective(BASE, ENV)["services"]["rabbitmq"]
    name, tag = rabbitmq["image"].split(":")
    assert name == "rabbitmq"
    assert tag.endswith("-management")
    assert tag[0].isdigit()
    assert tag.count(".") == 2
    assert rabbitmq["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert "rabbitmq-data:/var/lib/rabbitmq" in rabbitmq["volumes"]
    config = next(volume for volume in rabbitmq["volumes"] if volume.startswith("./deploy/rabbitmq/"))
    source, target, mode = config.split(":")
    assert (ROOT / source).is_file()
    assert target.startswith("/etc/rabbitmq/conf.d/")
    assert mode == "ro"
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"] == "blipq"


def test_start_order_waits_for_a_healthy_broker_and_a_finished_engine_build() -> None:
    services = effective(BASE, ENV)["services"]
    assert services["gateway"]["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert services["inference"]["depends_on"] == {
        "rabbitmq": {"condition": "service_healthy"},
        "engine-build": {"condition": "service_completed_successfully"},
    }
    assert services["engine-build"]["command"][0] == "build-engine"
    assert services["engine-build"]["restart"] == "no"
    assert services["gateway"]["ports"] == ["8000:8000"]
    # The engine is built into the same checkpoints volume the worker reads it from.
    assert "checkpoints:/checkpoints" in services["engine-build"]["volumes"]
    assert "checkpoints:/checkpoints" in services["inference"]["volumes"]


def test_the_worker_and_the_engine_build_each_reserve_one_nvidia_gpu() -> None:
    services = effective(BASE, ENV)["services"]
    for name in ("engine-build", "inference"):
        assert gpus(services[name]) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
    assert not gpus(services["gateway"])


def test_the_cpu_overlay_needs_no_gpu() -> None:
    services = effective(CPU, ENV)["services"]
    assert not any(gpus(service) for service in services.values())
    assert services["engine-build"]["command"] == ["download"]
    for name in ("engine-build", "inference"):
        assert services[name]["build"]["args"] == {"FLAVOR": "cpu"}
    assert services["inference"]["environment"]["BLIPQ_DEVICE"] == "cpu"
    assert services["inference"]["environment"]["BLIPQ_VISION_ENGINE"] == "torch"


def test_the_scale_overlay_runs_two_gateways_and_one_worker_per_gpu() -> None:
    services = effective(SCALE, ENV)["services"]
    gateways = [service for service in services.values() if service["image"].startswith("blipq-gateway")]
    workers = [service for service in services.values() if service.get("command", ["worker"])[0] == "worker"]
    workers = [service for service in workers if service["image"].startswith("blipq-inference")]
    assert len(gateways) == 2
    assert len(workers) == 2
    assert len({gateway["environment"]["BLIPQ_GATEWAY_ID"] for gateway in gateways}) == 2
    assert len({gateway["ports"][0].split(":")[0] for gateway in gateways}) == 2
    assert len({gateway["volumes"][0].split(":")[0] for gateway in gateways}) == 2
    # One shared store, healthy before either gateway starts.
    assert {gateway["environment"]["BLIPQ_STORE"] for gateway in gateways} == {
        "postgresql://blipq:pg-from-the-env@postgres:5432/blipq"
    }
    for gateway in gateways:
        assert gateway["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert gateway["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
    postgres = services["postgres"]
    assert postgres["image"].split(":")[0] == "postgres"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "pg-from-the-env"
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assignments = [device["device_ids"] for worker in workers for device in gpus(worker)]
    assert sorted(assignments) == [["0"], ["1"]]


def test_the_gateways_message_size_limit_is_the_brokers() -> None:
    """Past the broker's max_message_size RabbitMQ closes the channel; the gateway answers 413 before that."""
    conf = (ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()
    found = re.search(r"^max_message_size\s*=\s*(\d+)\s*$", conf, re.MULTILINE)
    assert found is not None
    assert GatewaySettings.model_fields["max_message_bytes"].default == int(found.group(1))
