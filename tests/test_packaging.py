"""Installed, blipq is one import package: the wheel's only top-level name is `blipq`, with every side
under it, and it installs beside a package that owns a top-level `inference` (as a popular one on PyPI
does) without either overwriting the other or breaking when the other is uninstalled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.wheels import build_wheel, files_in, top_level_names

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("contract", "gateway", "inference", "engine_build")
#: a module of each side and the command, imported from the fresh environment
BLIPQ_MODULES = (
    "blipq.cli",
    "blipq.contract.options",
    "blipq.gateway.app",
    "blipq.inference.engine",
    "blipq.engine_build.synthetic",
)

REPORT_IMPORTS = """
import importlib, json, sys
report = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        report[name] = {"error": str(exc)}
    else:
        report[name] = {"file": module.__file__, "owner": getattr(module, "OWNER", None)}
print(json.dumps(report))
"""


def test_the_wheel_has_one_top_level_package(blipq_wheel: Path) -> None:
    assert top_level_names(blipq_wheel) == {"blipq"}


def test_every_file_of_every_side_is_in_the_wheel_under_blipq(blipq_wheel: Path) -> None:
    def shipped(folder: Path) -> set[str]:
        return {
            path.relative_to(folder).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }

    expected = {f"blipq/{name}" for name in shipped(ROOT / "blipq") if "/" not in name}
    for side in SIDES:
        expected |= {f"blipq/{side}/{name}" for name in shipped(ROOT / side)}
    assert "blipq/contract/schema/request.schema.json" in expected  # data files too, not only modules
    assert files_in(blipq_wheel) == expected


def test_installs_and_uninstalls_beside_a_package_that_owns_inference(blipq_wheel: Path, tmp_path: Path) -> None:
    other_wheel = build_wheel(write_other_project(tmp_path / "other"), tmp_path / "other-wheel")
    python = fresh_environment(tmp_path / "env")
    install(python, "install", "--no-deps", "--no-index", str(other_wheel))
    install(python, "install", "--no-deps", "--no-index", str(blipq_wheel))
    empty = tmp_path / "cwd"  # nothing importable in the working directory
    empty.mkdir()

    both = report_imports(python, ["inference", *BLIPQ_MODULES], empty)
    assert both["inference"].get("owner") == "someone-else", both["inference"]
    for name, found in both.items():
        assert "file" in found, f"{name}: {found}"
        assert Path(found["file"]).is_relative_to(tmp_path / "env"), f"{name} imported from {found['file']}"
    command = subprocess.run([str(python.parent / "blipq"), "--help"], capture_output=True, text=True, check=False)
    assert command.returncode == 0, command.stderr
    assert "caption" in command.stdout

    install(python, "uninstall", "--yes", "someone-elses-inference")
    after = report_imports(python, ["inference", *BLIPQ_MODULES], empty)
    assert "error" in after["inference"]
    assert all("file" in after[name] for name in BLIPQ_MODULES), after


def write_other_project(folder: Path) -> Path:
    (folder / "inference").mkdir(parents=True)
    (folder / "inference" / "__init__.py").write_text('OWNER = "someone-else"\n')
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "someone-elses-inference"\nversion = "1.0"\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["inference"]\n'
    )
    return folder


def fresh_environment(folder: Path) -> Path:
    """A new virtual environment that sees this one's third-party packages (torch, FastAPI, ...) after its
    own, through a .pth line: a path added that way has its own .pth files (the editable blipq's) ignored."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(own) / "lent-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def install(python: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def report_imports(python: Path, modules: list[str], cwd: Path) -> dict[str, dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(python), "-c", REPORT_IMPORTS, *modules], capture_output=True, text=True, check=True, cwd=cwd, env=env
    )
    report: dict[str, dict[str, str]] = json.loads(result.stdout)
    return report
