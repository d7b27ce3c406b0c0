"""What one stage of a Dockerfile finds on disk after its COPY instructions, rebuilt without a Docker
engine: the build context filtered by .dockerignore, then each `COPY <src>... <dest>` of the stage
replayed under its WORKDIR, symlinks kept as links (as Docker copies them)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

Rule = tuple[bool, re.Pattern[str]]  # (re-included by "!", the pattern)


def dockerignore_rules(context: Path) -> list[Rule]:
    rules: list[Rule] = []
    for line in (context / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), glob_pattern(line.removeprefix("!").strip("/"))))
    return rules


def glob_pattern(glob: str) -> re.Pattern[str]:
    """Docker's patterns: `**` spans folders, `*` and `?` stay within one name."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", glob)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def is_ignored(relative: str, rules: list[Rule]) -> bool:
    """The last rule that matches the path or a folder above it decides, as in Docker."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for included, pattern in rules:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not included
    return ignored


def lay_out_stage(dockerfile: Path, stage: str, context: Path, into: Path) -> Path:
    """Replays the stage's COPYs from `context` under `into`; returns the stage's last WORKDIR there."""
    rules = dockerignore_rules(context)
    workdir, in_stage = into, False
    for line in dockerfile.read_text().splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "FROM":
            in_stage = rest.split(" AS ")[-1].strip() == stage
        elif in_stage and instruction == "WORKDIR":
            workdir = into / rest.strip().lstrip("/")
        elif in_stage and instruction == "COPY" and "--from" not in rest:
            *sources, destination = rest.split()
            target = workdir / destination
            for source in sources:
                if (context / source).is_dir():
                    copy_folder(context, source, target, rules)
                elif not is_ignored(source, rules):
                    into_folder = len(sources) > 1 or destination.endswith("/")
                    copy_entry(context / source, target / source if into_folder else target)
    return workdir


def copy_folder(context: Path, source: str, target: Path, rules: list[Rule]) -> None:
    for folder, names, files in os.walk(context / source):
        for name in [*names, *files]:
            path = Path(folder) / name
            relative = path.relative_to(context).as_posix()
            if (path.is_symlink() or path.is_file()) and not is_ignored(relative, rules):
                copy_entry(path, target / path.relative_to(context / source))


def copy_entry(path: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        destination.symlink_to(path.readlink())
    else:
        shutil.copy2(path, destination)
