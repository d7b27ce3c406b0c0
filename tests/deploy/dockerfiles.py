"""What the images built from deploy/*.Dockerfile would hold, read from the Dockerfiles themselves:
the final stage's ENV, USER, VOLUME, ENTRYPOINT, CMD and HEALTHCHECK, every ARG, and each stage's base."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "deploy").glob("*.Dockerfile"))


@dataclass
class Image:
    dockerfile: Path
    args: dict[str, str] = field(default_factory=dict)  # every ARG, with its default ("" if none)
    bases: list[str] = field(default_factory=list)  # each FROM, ARG defaults filled in
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    volumes: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # every RUN of every stage

    def environment(self, overrides: dict[str, str]) -> dict[str, str]:
        """The final stage's ENV as a process outside the image gets it: PATH stays this machine's."""
        return {**{key: value for key, value in self.env.items() if key != "PATH"}, **overrides}


def read_dockerfile(path: Path) -> Image:
    image = Image(path)
    text = re.sub(r"\\\n\s*(#[^\n]*\n\s*)*", " ", path.read_text())  # join continued lines
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            image.args.setdefault(name, default)
        elif instruction == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda match: image.args.get(match[1], ""), rest.split(" AS ")[0])
            image.bases.append(base.strip())
            image.env, image.user, image.volumes = {}, "root", []  # a new stage starts afresh
        elif instruction == "ENV":
            image.env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif instruction == "USER":
            image.user = rest
        elif instruction == "VOLUME":
            image.volumes = json.loads(rest)
        elif instruction == "ENTRYPOINT":
            image.entrypoint = json.loads(rest)
        elif instruction == "CMD":
            image.cmd = json.loads(rest)
        elif instruction == "HEALTHCHECK":
            image.healthcheck = json.loads(rest.split(" CMD ", 1)[1])
        elif instruction == "RUN":
            image.runs.append(rest)
    return image
