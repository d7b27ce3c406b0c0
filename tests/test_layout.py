"""The dependency rules of the layout, each checked in a fresh interpreter that imports a whole side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the repository's folders of Python code; each side reaches the one import package as blipq.<side>
FOLDERS = ("blipq", "contract", "gateway", "inference", "engine_build")
SIDES = ("contract", "gateway", "inference", "engine_build")

IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""

#: side -> third-party top-level modules that importing all of it must not load
FORBIDDEN = {
    "contract": {"torch", "transformers", "fastapi", "starlette"},
    "gateway": {"torch", "transformers"},
    "inference": {"fastapi", "starlette"},
}
#: side -> the parts of blipq it may load: the package's own light __init__, itself and the contract
#: (never the other side, engine_build, or the command's modules, the only code joining both sides)
MAY_LOAD = {
    "contract": ("blipq.contract",),
    "gateway": ("blipq.contract", "blipq.gateway"),
    "inference": ("blipq.contract", "blipq.inference"),
}


def import_everything(package: str, cwd: Path) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, package], capture_output=True, text=True, check=False, cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout)
    return found


def blipq_parts_outside(loaded: list[str], allowed: tuple[str, ...]) -> set[str]:
    return {
        name
        for name in loaded
        if name.startswith("blipq.") and not any(name == part or name.startswith(part + ".") for part in allowed)
    }


@pytest.mark.parametrize("side", sorted(FORBIDDEN))
def test_importing_a_whole_side_loads_nothing_it_must_not(side: str) -> None:
    found = import_everything(f"blipq.{side}", ROOT)
    assert len(found["imported"]) > 3, found["imported"]  # the walk really found the modules
    top_level = {name.split(".")[0] for name in found["loaded"]}
    assert not FORBIDDEN[side] & top_level, f"{side} loads {FORBIDDEN[side] & top_level}"
    assert not blipq_parts_outside(found["loaded"], MAY_LOAD[side])
    assert not set(SIDES) & top_level, f"{side} loads a side under its bare folder name"


def test_the_blipq_part_check_notices_the_other_side() -> None:
    """The rule above can fail: the command's modules and the other side are outside what a side may load."""
    loaded = ["blipq", "blipq.contract.options", "blipq.gateway.app", "blipq.inference.engine", "blipq.cli"]
    assert blipq_parts_outside(loaded, MAY_LOAD["gateway"]) == {"blipq.inference.engine", "blipq.cli"}
    assert blipq_parts_outside(loaded, MAY_LOAD["contract"]) == {
        "blipq.gateway.app",
        "blipq.inference.engine",
        "blipq.cli",
    }


def test_the_check_notices_a_forbidden_import(tmp_path: Path) -> None:
    """The same check on a package that does import torch reports it (the test above can fail)."""
    (tmp_path / "leaky").mkdir()
    (tmp_path / "leaky" / "__init__.py").write_text("")
    (tmp_path / "leaky" / "model.py").write_text("import torch\n")
    assert "torch" in import_everything("leaky", tmp_path)["loaded"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_module_is_over_400_lines(folder: str) -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / folder).rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, f"split these modules: {long}"
