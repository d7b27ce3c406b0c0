"""Reads compose files as `docker compose` would, where no Docker engine (or compose) is installed:
`${VAR}` interpolation from an environment, overlays merged in order, then the Compose specification's
own checks (the `compose-spec` parser). The merge follows compose for what the files here use: mappings
merge key by key, other values are replaced, `!reset` removes a value and `!override` replaces it whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from compose_spec import PyCompose

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}")


class Reset:
    """`!reset`: the overlay removes this value."""


class Override:
    """`!override`: the overlay's value replaces the base's whole."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: Override(
        loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    ),
)


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Every string with `${VAR}`, `${VAR:-default}` or `${VAR:?error}` resolved from `env`."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, Override):
        return Override(interpolate(value.value, env))
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        found = env.get(name)
        empty = found is None or (found == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and empty:
            return str(arg)
        if op in (":?", "?") and empty:
            raise MissingVariable(f"{name}: {arg}")
        return found or ""

    assert "$" not in VARIABLE.sub("", value).replace("$$", ""), f"an interpolation this reader does not know: {value}"
    return VARIABLE.sub(resolve, value).replace("$$", "$")


def merge(base: Any, overlay: Any) -> Any:
    if isinstance(overlay, Override):
        return overlay.value
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value)
        return merged
    return overlay


def raw(file: str) -> dict[str, Any]:
    """One file as written (anchors resolved, nothing interpolated), without its `x-` extension fields."""
    loaded = yaml.load((ROOT / file).read_text(), Loader=ComposeLoader)
    return {key: value for key, value in loaded.items() if not key.startswith("x-")}


def effective(files: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """The configuration `docker compose -f A -f B config` would print, checked against the specification."""
    config: dict[str, Any] = {}
    for file in files:
        config = merge(config, interpolate(raw(file), env))
    PyCompose.from_json(json.dumps(config)).validate()  # raises ValueError with the path of what is wrong
    return config
