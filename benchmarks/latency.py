"""The latency of one image that arrives while a full batch runs, with each decoder.

The batcher (what `blipq serve` and `blipq worker` run) gets a job of --batch images; as soon as the model
has started them, one more image arrives with the same options. With the engine's own search
(`--decoder blipq`) it joins the running searches at the next step; with transformers' `generate` it waits
for the batch to finish. Rows: the full batch's time, the late image's latency (from its submission to its
caption), and one image's latency on an idle model. Every caption is forced to --tokens tokens.

    python -m benchmarks.latency --size base --batch 8
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from pathlib import Path


def measure(model_dir: Path, blobs: list[bytes], decoder: str, args: argparse.Namespace) -> dict[str, float]:
    from blipq.contract.messages import ImageInput, ImageResult
    from blipq.contract.options import CaptionOptions
    from blipq.inference.batcher import Batcher, BatcherConfig, WorkItem
    from blipq.inference.engine import CaptionEngine

    engine = CaptionEngine.load(model_dir, device=args.device, dtype=args.dtype, decoder=decoder)  # type: ignore[arg-type]
    length = engine.prompt_length("a picture of ") + args.tokens
    options = CaptionOptions(num_beams=args.beams, max_length=length, min_length=length)
    done: dict[str, float] = {}
    started: dict[str, float] = {}
    changed = threading.Condition()

    def on_start(item: WorkItem) -> None:
        with changed:
            started[item.key] = time.perf_counter()
            changed.notify_all()

    def on_done(item: WorkItem, results: list[ImageResult]) -> None:
        assert all(result.caption is not None for result in results), results
        with changed:
            done[item.key] = time.perf_counter()
            changed.notify_all()

    batcher = Batcher(engine, BatcherConfig(max_batch=2 * args.batch), on_start=on_start,
                      on_done=on_done)  # fmt: skip
    batcher.start()

    def run(key: str, images: list[bytes]) -> float:
        submitted = time.perf_counter()
        batcher.submit(WorkItem(key, [ImageInput(data=blob) for blob in images], options))
        with changed:
            changed.wait_for(lambda: key in done)
        return done[key] - submitted

    try:
        run("warm-up", blobs[:2])
        idle = statistics.median(run(f"idle-{n}", blobs[:1]) for n in range(3))
        batch_submitted = time.perf_counter()
        batcher.submit(WorkItem("batch", [ImageInput(data=blob) for blob in blobs[: args.batch]], options))
        with changed:
            changed.wait_for(lambda: "batch" in started)
        time.sleep(args.late_ms / 1000)  # the batch is on the model when the late image arrives
        late = run("late", blobs[args.batch : args.batch + 1])
        with changed:
            changed.wait_for(lambda: "batch" in done)
        batch = done["batch"] - batch_submitted
    finally:
        batcher.stop()
    return {"idle": idle, "batch": batch, "late": late}


def main() -> None:
    from benchmarks.inputs import checkpoint, make_inputs
    from blipq.inference.engine import quiet_transformers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    parser.add_argument("--batch", type=int, default=8, help="images in the full batch")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--late-ms", type=int, default=300, help="after the batch starts, the late image arrives")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    quiet_transformers()
    model_dir = checkpoint(args.size)
    blobs = [path.read_bytes() for path in make_inputs(args.batch + 1)]
    rows = {decoder: measure(model_dir, blobs, decoder, args) for decoder in ("blipq", "transformers")}
    import torch
    import transformers

    command = "python -m benchmarks.latency " + " ".join(
        f"--{name.replace('_', '-')} {value}" for name, value in vars(args).items() if name != "out"
    )
    lines = [
        f"# One image arriving while a batch runs: BLIP {args.size}, beam {args.beams}, {args.tokens} tokens, "
        f"{args.device} {args.dtype}, batch {args.batch}",
        "",
        f"- command: `{command}`",
        f"- machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, {platform.platform()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- the late image is submitted {args.late_ms} ms after the batch's first image went to decoding; one run each",
        "",
        "| decoder | full batch s | late image s | late image / idle | one image, idle s |",
        "|---|---|---|---|---|",
    ]
    for decoder, row in rows.items():
        lines.append(
            f"| {decoder} | {row['batch']:.2f} | {row['late']:.2f} | {row['late'] / row['idle']:.1f}x "
            f"| {row['idle']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    device = args.device.replace(":", "")
    (args.out / f"latency-{args.size}-{device}-{args.dtype}.md").write_text(text)


if __name__ == "__main__":
    main()
