"""Building wheels the way `pip wheel .` does, with the build backend from the dev extra (no download),
and reading what they would install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


def build_wheel(project: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out)]
    result = subprocess.run(
        [*pip_wheel, str(project)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def files_in(wheel: Path) -> set[str]:
    """The paths the wheel installs into site-packages (its metadata folder left out)."""
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if ".dist-info/" not in name}


def top_level_names(wheel: Path) -> set[str]:
    return {path.split("/")[0] for path in files_in(wheel)}
