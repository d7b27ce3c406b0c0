"""CPU time of processes as the kernel counts it, and CPU affinity: what the benchmarks charge to whom."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(leader: int) -> float:
    """User + system CPU of every live process in `leader`'s session (started with start_new_session=True, so
    a server, its threads and any children it spawned are counted together)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[3]) == leader:  # fields[3] is the session id (the 6th field of /proc/<pid>/stat)
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def cpu_list(count: int) -> str:
    """The first `count` CPUs this process may use, as taskset takes them ("0,1")."""
    usable = sorted(os.sched_getaffinity(0))
    return ",".join(str(cpu) for cpu in usable[:count])


def pinned(command: list[str], cpus: int | None) -> list[str]:
    """`command` run on the first `cpus` CPUs (None: all of them)."""
    return command if cpus is None else ["taskset", "-c", cpu_list(cpus), *command]
