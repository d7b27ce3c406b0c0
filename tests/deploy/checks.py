"""Checks shared by the Dockerfile and compose tests: a `blipq` command line names a real command with
real options, and `BLIPQ_*` variables are real settings with valid values."""

from __future__ import annotations

import os
import shlex

import pytest
import typer.main

from blipq.cli import app
from blipq.gateway.settings import GatewaySettings
from blipq.inference.settings import InferenceSettings

CLI = typer.main.get_command(app)
SETTINGS = {f"BLIPQ_{name.upper()}" for name in GatewaySettings.model_fields | InferenceSettings.model_fields}


def check_blipq_command(argv: list[str], where: str) -> None:
    """`argv` (after `blipq`) names a real command and only its real options, with valid values."""
    assert argv, f"{where}: empty command"
    name, *args = argv
    commands = CLI.commands  # type: ignore[attr-defined]
    assert name in commands, f"{where}: `blipq {name}` is not a command ({', '.join(commands)})"
    try:
        commands[name].make_context(f"blipq {name}", list(args))
    except Exception as exc:  # click's usage errors (typer may bring its own click)
        pytest.fail(f"{where}: `blipq {shlex.join(argv)}`: {exc}")


def check_environment(env: dict[str, str], where: str) -> None:
    """Every BLIPQ_* variable is a setting, and together they validate (a typo in a number fails here)."""
    unknown = sorted(key for key in env if key.startswith("BLIPQ_") and key not in SETTINGS)
    assert not unknown, f"{where}: not settings: {unknown}"
    saved = dict(os.environ)
    try:
        os.environ.update({key: str(value) for key, value in env.items() if key.startswith("BLIPQ_")})
        GatewaySettings()
        InferenceSettings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
