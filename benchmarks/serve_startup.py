"""How long `blipq serve` (embedded mode) takes to become ready, and what it costs while idle.

Starts a real `blipq serve` on a free loopback port with a model checkpoint, measures the time from
spawning the process to the first 200 from /readyz (imports, store, model load, first request
served), then samples the process's CPU time over an idle period (no requests).

    python -m benchmarks.serve_startup --runs 3 --idle-s 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from blipq.engine_build.synthetic import write_test_checkpoint
from tests.server import Server


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a fresh tiny test model)")
    args = parser.parse_args()
    ready_s, idle_percent = [], []
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or write_test_checkpoint(Path(scratch) / "tiny", size="tiny")
        for run in range(args.runs):
            server = Server(model, Path(scratch) / f"run-{run}")
            started = time.perf_counter()
            server.start()
            ready_s.append(time.perf_counter() - started)
            assert server.process is not None
            before = cpu_seconds(server.process.pid)
            time.sleep(args.idle_s)
            idle_percent.append(100 * (cpu_seconds(server.process.pid) - before) / args.idle_s)
            server.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"model: {model}; {args.runs} starts, {args.idle_s:g} s idle each\n")
    print("| | median | max |")
    print("|---|---|---|")
    print(f"| start to ready (s) | {statistics.median(ready_s):.2f} | {max(ready_s):.2f} |")
    print(f"| idle CPU (% of one core) | {statistics.median(idle_percent):.2f} | {max(idle_percent):.2f} |")


if __name__ == "__main__":
    main()
