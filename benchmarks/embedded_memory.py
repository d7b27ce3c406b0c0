"""How much memory `blipq serve` (embedded mode) takes while a backlog of big images waits.

Starts a real `blipq serve` with the tiny model, batches of one and captions of at least 500 tokens with 16
beams, so that the model is slower than the clients and a backlog forms. Posts `--jobs` jobs of one
incompressible PNG each as fast as the server takes them, and reads the server's resident memory (VmRSS,
and the peak VmHWM) from /proc: when idle, once every job is accepted, and at the peak until every job is
finished.

`--before DIR` runs the same against another checkout (a `git worktree` of an earlier commit) in the same
run, so the two rows compare on one machine:

    git worktree add /tmp/before <commit>
    python -m benchmarks.embedded_memory --jobs 60 --before /tmp/before
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from blipq.engine_build.synthetic import write_test_checkpoint
from tests.server import Server, wait_until


def memory_mib(pid: int, field: str) -> float:
    """VmRSS (resident now) or VmHWM (the peak) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(field)


def big_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def measure(model: Path, data_dir: Path, source: Path | None, jobs: int, image: bytes) -> dict[str, float]:
    env = {"PYTHONPATH": str(source)} if source else None
    server = Server(model, data_dir, "--max-batch", "1", "--decode-threads", "1", env=env, cwd=source).start()
    assert server.process is not None
    pid = server.process.pid
    try:
        idle = memory_mib(pid, "VmRSS")
        # Long captions (at least 500 tokens of 16 beams) keep even the tiny model busy for a while per image.
        options = {"num_beams": 16, "max_length": 512, "min_length": 500}
        body = {"images": [{"b64": base64.b64encode(image).decode()}], "options": options}
        started = time.monotonic()
        with httpx.Client(timeout=60) as client:
            ids = [client.post(f"{server.url}/v1/jobs", json=body).json()["id"] for _ in range(jobs)]
            accepted_s = time.monotonic() - started
            accepted = memory_mib(pid, "VmRSS")

            def finished() -> bool:
                listed = client.get(f"{server.url}/v1/jobs", params={"status": "succeeded", "limit": jobs}).json()
                return len(listed["jobs"]) == len(ids)

            wait_until(finished, timeout_s=1800)
        return {
            "idle": idle,
            "accepted": accepted,
            "peak": memory_mib(pid, "VmHWM"),
            "accepted_s": accepted_s,
            "all_s": time.monotonic() - started,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--side", type=int, default=1700, help="image side in pixels (1700: an 8.3 MiB PNG)")
    parser.add_argument("--before", type=Path, help="another checkout to measure in the same run")
    args = parser.parse_args()
    image = big_png(args.side)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        model = write_test_checkpoint(Path(scratch) / "tiny", size="tiny")
        sources: list[tuple[str, Path | None]] = [("this checkout", None)]
        if args.before:
            sources.insert(0, (f"{args.before}", args.before))
        for name, source in sources:
            rows.append((name, measure(model, Path(scratch) / name.replace("/", "_"), source, args.jobs, image)))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{args.jobs} jobs of one {len(image) / 2**20:.1f} MiB PNG ({args.side}x{args.side} noise), tiny model,")
    print(f"batches of 1, 16 beams, 500+ tokens: {args.jobs * len(image) / 2**20:.0f} MiB of images posted\n")
    print(
        "| server | RSS idle (MiB) | RSS when all accepted | peak RSS | all accepted after (s) | all done after (s) |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in rows:
        print(
            f"| {name} | {row['idle']:.0f} | {row['accepted']:.0f} | {row['peak']:.0f} | "
            f"{row['accepted_s']:.1f} | {row['all_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
