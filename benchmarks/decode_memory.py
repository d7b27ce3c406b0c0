"""The memory decoding one large image takes, against its 8-bit RGB size, by format.

For each format, a `--side` x `--side` picture (noise, scaled up 16x so that it compresses like a photo) is
prepared once to warm up, then once more after resetting the process's peak memory (writing 5 to
/proc/self/clear_refs); the table gives the peak above the resident memory before it (VmHWM - VmRSS),
which `blipq.inference.decode_budget` estimates decoding costs from.

    python -m benchmarks.decode_memory --side 6000
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from blipq.contract.images import ImagePolicy
from blipq.engine_build.synthetic import write_test_checkpoint
from blipq.inference.decode_budget import decode_cost
from blipq.inference.engine import CaptionEngine

CASES = [
    ("JPEG", "RGB"),
    ("JPEG", "CMYK"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "L"),
    ("TIFF", "RGB"),
    ("WEBP", "RGB"),
]


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(field)


def picture(fmt: str, mode: str, side: int) -> bytes:
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = np.random.default_rng(0).integers(0, 256, (side // 16, side // 16, bands), dtype=np.uint8)
    small = Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels, mode=mode)
    buffer = io.BytesIO()
    small.resize((side, side)).save(buffer, fmt)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6000)
    args = parser.parse_args()
    policy = ImagePolicy(max_bytes=10**9, max_pixels=10**9)
    rgb_mib = args.side * args.side * 3 / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        engine = CaptionEngine.load(write_test_checkpoint(Path(scratch) / "tiny", size="tiny"), device="cpu")
        for fmt, mode in CASES:
            data = picture(fmt, mode, args.side)
            engine.prepare_file(data, policy)  # warm up: lazy imports, allocator pools
            gc.collect()
            Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
            before = status_mib("VmRSS")
            engine.prepare_file(data, policy)
            peak = status_mib("VmHWM") - before
            rows.append((fmt, mode, len(data) / 2**20, peak, decode_cost(data, policy) / 2**20))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, ", end="")
    print(f"Pillow {Image.__version__}; {args.side}x{args.side} pictures, 8-bit RGB size {rgb_mib:.0f} MiB\n")
    print("| format | mode | file (MiB) | peak while preparing (MiB) | x RGB size | budget's estimate (MiB) |")
    print("|---|---|---|---|---|---|")
    for fmt, mode, size, peak, estimate in rows:
        print(f"| {fmt} | {mode} | {size:.1f} | {peak:.0f} | {peak / rgb_mib:.2f} | {estimate:.0f} |")


if __name__ == "__main__":
    main()
