"""The topology both sides declare is one piece of data; README's description of it must say the same."""

from __future__ import annotations

import re
from pathlib import Path

from blipq.contract.amqp import topology

README = Path(__file__).parents[2] / "README.md"


def readme_topology() -> str:
    text = README.read_text(encoding="utf-8")
    paragraph = text.split("**Topology**", 1)[1].split("\n\n", 1)[0]
    return re.sub(r"\s+", " ", paragraph)


def test_readme_describes_the_topology_both_sides_declare() -> None:
    described = readme_topology()
    shape = topology(10_000)
    for exchange in shape.exchanges:
        assert f"exchange `{exchange.name}` ({exchange.type}" in described
    for queue in shape.queues:
        assert queue.arguments["x-queue-type"] == "quorum"
        assert f"quorum queue `{queue.name}`" in described
        for name, value in queue.arguments.items():
            if name != "x-queue-type":
                shown = f"{value:,}" if isinstance(value, int) else f"`{value}`"
                assert f"`{name}` {shown}" in described, name
    types = {exchange.name: exchange.type for exchange in shape.exchanges}
    for binding in shape.bindings:
        route = rf"`{re.escape(binding.exchange)}` \({types[binding.exchange]}[^)]*\) → quorum queue `{binding.queue}`"
        assert re.search(route, described), route
        if binding.routing_key:
            assert f"`{binding.queue}` (routing key `{binding.routing_key}`" in described
