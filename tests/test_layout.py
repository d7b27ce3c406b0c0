"""The dependency rules of the layout, each checked in a fresh interpreter that imports a whole side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("blipq", "contract", "gateway", "inference", "engine_build")

IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""

#: side -> top-level modules that importing all of it must not load
FORBIDDEN = {
    "contract": {"torch", "transformers", "fastapi", "starlette", "gateway", "inference", "engine_build", "blipq"},
    "gateway": {"torch", "transformers", "inference", "engine_build", "blipq"},
    "inference": {"fastapi", "starlette", "gateway", "blipq"},
}


@pytest.mark.parametrize("side", sorted(FORBIDDEN))
def test_importing_a_whole_side_loads_nothing_it_must_not(side: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, side], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert len(found["imported"]) > 3, found["imported"]  # the walk really found the modules
    assert not FORBIDDEN[side] & set(found["loaded"]), f"{side} loads {FORBIDDEN[side] & set(found['loaded'])}"


def test_the_check_notices_a_forbidden_import(tmp_path: Path) -> None:
    """The same check on a package that does import torch reports it (the test above can fail)."""
    (tmp_path / "leaky").mkdir()
    (tmp_path / "leaky" / "__init__.py").write_text("")
    (tmp_path / "leaky" / "model.py").write_text("import torch\n")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, "leaky"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert "torch" in json.loads(result.stdout)["loaded"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_400_lines(package: str) -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / package).rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, f"split these modules: {long}"
