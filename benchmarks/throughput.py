"""Throughput and latency of BLIP captioning: the transformers reference against blipq, same weights and inputs.

Contenders, each run in its own subprocess (so peak memory is its own), alternating over rounds:
  reference-loop      transformers BlipProcessor + generate, one image at a time, fp32
                      (what the original project did, with the model loaded once)
  reference-batch-N   the same, N images per generate call, --dtype
  engine-batch-N      blipq's CaptionEngine through its batching pipeline (decode on threads), --dtype
  engine-transformers-batch-N   the same engine with transformers' `generate` as its decoder (--decoder
                      transformers), at the largest of --engine-batches
  engine-eager-steps-batch-N   on CUDA only: the engine with its decoder's steps launched eagerly, not
                      replayed as CUDA graphs (the CPU's layout), at the largest of --engine-batches
  http                a real `blipq serve` (one worker, --max-batch) driven over HTTP by concurrent
                      clients; plus single-image latency when idle
Weights: `blipq test-model --size base|large` (exact Salesforce shapes, random weights). Every
caption is forced to --tokens new tokens (min_length = max_length), so random weights do the
same work as real ones. Inputs: JPEG files from 640x480 to 2000x1500; decoding is timed.

    python -m benchmarks.throughput --size base --images 16 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from benchmarks import contenders, served
from benchmarks.contenders import CONTENDERS, Result, engine_name
from benchmarks.inputs import checkpoint, make_inputs

# -- orchestration -----------------------------------------------------------------------------


def run_in_subprocess(args: argparse.Namespace, kind: str, batch: int, dtype: str) -> Result:
    command = [
        sys.executable, "-m", "benchmarks.throughput", "--one", kind, "--batch", str(batch), "--dtype", dtype,
        "--size", args.size, "--images", str(args.images), "--tokens", str(args.tokens), "--beams", str(args.beams),
        "--device", args.device, "--concurrency", str(args.concurrency), "--vision-engine", args.vision_engine,
        "--torch-threads", str(args.torch_threads),
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise RuntimeError(f"{kind} batch {batch} failed:\n{output.stderr[-4000:]}")
    return Result(**json.loads(output.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--reference-batch", type=int, default=8)
    parser.add_argument("--engine-batches", default="1,4,8,16", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument(
        "--vision-engine",
        choices=["torch", "exported", "tensorrt"],
        default="torch",
        help="the engine rows' vision encoder (tensorrt needs an engine from `blipq build-engine`)",
    )
    parser.add_argument("--served", action="store_true", help="the served regime instead (benchmarks/served.py)")
    served.add_arguments(parser)
    parser.add_argument("--one", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    contenders.configure(args.beams, args.concurrency, args.vision_engine, args.torch_threads)
    model_dir = checkpoint(args.size)
    if args.served:
        run_served(args, model_dir)
        return
    paths = make_inputs(args.images)
    if args.one:
        from blipq.inference.engine import quiet_transformers

        quiet_transformers()
        result = CONTENDERS[args.one](model_dir, paths, args.batch, args.dtype, args.device, args.tokens)
        print(json.dumps(asdict(result)))
        return
    plan = [("reference", 1, "fp32"), ("reference", args.reference_batch, args.dtype)]
    engine_batches = [int(b) for b in args.engine_batches.split(",")]
    plan += [("engine", b, args.dtype) for b in engine_batches]
    plan += [("engine-transformers", max(engine_batches), args.dtype)]
    if args.device.startswith("cuda"):  # elsewhere the engine's steps are these already
        plan += [("engine-eager-steps", max(engine_batches), args.dtype)]
    plan += [("http", max(engine_batches), args.dtype)]
    runs: dict[str, list[Result]] = {}
    for round_number in range(args.rounds):
        for kind, batch, dtype in plan if round_number % 2 == 0 else reversed(plan):
            result = run_in_subprocess(args, kind, batch, dtype)
            runs.setdefault(result.contender, []).append(result)
            print(
                f"round {round_number + 1}: {result.contender} {result.images / result.seconds:.3f} img/s",
                file=sys.stderr,
            )
    report(args, runs, engine_batches)


def run_served(args: argparse.Namespace, model_dir: Path) -> None:
    """The served regime's table, written to docs/benchmarks/served-<size>-<device>[-<dtype>].md."""
    args.model_dir = model_dir.resolve()
    distinct = make_inputs(min(args.images, 48))
    paths = [distinct[index % len(distinct)] for index in range(args.images)]
    table = served.run(args, paths)
    stem = f"served-{args.size}-{args.device.replace(':', '')}-{args.dtype}"
    text = "\n".join([
        f"# Served against the engine: BLIP {args.size}, beam {args.beams}, {args.tokens} tokens, {args.device} "
        f"{args.dtype}, max batch {args.batch}, torch threads {args.torch_threads or 'auto'}",
        "",
        *environment(args),
        f"- {args.images} requests of one JPEG each ({len(distinct)} files, 640x480 to 2000x1500, repeated), "
        f"{args.concurrency} clients; median of {args.rounds} alternating rounds",
        "",
        table,
    ])  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(text)
    print(text)


def environment(args: argparse.Namespace) -> list[str]:
    import torch
    import transformers

    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    return [
        f"- command: `python -m benchmarks.throughput {' '.join(sys.argv[1:])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}{gpu}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__},"
        f" transformers {transformers.__version__}",
    ]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption (forced)")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="dtype of the batched reference, the engine and http")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP clients in flight")


def report(args: argparse.Namespace, runs: dict[str, list[Result]], engine_batches: list[int]) -> None:

    def rate(name: str) -> float:
        return statistics.median(r.images / r.seconds for r in runs[name])

    loop = rate("reference-loop")
    batched = rate(f"reference-batch-{args.reference_batch}")
    reference_ids = runs["reference-loop"][0].token_ids
    lines = [
        f"# Throughput: BLIP {args.size}, beam {args.beams}, {args.tokens} tokens, {args.device} {args.dtype},"
        f" {args.vision_engine} vision encoder",
        "",
        *environment(args),
        f"- {args.images} JPEGs from 640x480 to 2000x1500, decoding included;"
        f" median of {args.rounds} alternating rounds; each contender in its own process",
        "",
        "| contender | img/s | ms/image | p50 ms | p95 ms | idle 1-image ms | peak RSS MB | GPU peak MB"
        " | mean batch | model busy | x loop | x batched ref | exact vs loop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, results in runs.items():
        speed = rate(name)
        latencies = sorted(latency for r in results for latency in r.latencies_ms)
        p50 = f"{statistics.median(latencies):.0f}" if latencies else ""
        p95 = f"{latencies[int(0.95 * (len(latencies) - 1))]:.0f}" if latencies else ""
        idle = f"{results[0].idle_latency_ms:.0f}" if results[0].idle_latency_ms else ""
        gpu = f"{max(r.gpu_peak_mb or 0 for r in results):.0f}" if results[0].gpu_peak_mb is not None else ""
        ids = results[0].token_ids
        exact = f"{sum(a == b for a, b in zip(ids, reference_ids, strict=False))}/{len(ids)}" if ids else ""
        lines.append(
            f"| {name} | {speed:.3f} | {1000 / speed:.0f} | {p50} | {p95} | {idle} | "
            f"{max(r.peak_rss_mb for r in results):.0f} | {gpu} | {_mean(results, 'mean_batch', '.1f')}"
            f" | {_mean(results, 'model_busy', '.0%')} | {speed / loop:.2f} | {speed / batched:.2f}"
            f" | {exact} |"
        )
    stem = f"throughput-{args.size}-{args.device.replace(':', '')}-{args.dtype}"
    if args.beams != 3:  # beam 3 is the default and keeps the plain name
        stem += "-greedy" if args.beams == 1 else f"-beam{args.beams}"
    if args.vision_engine != "torch":
        stem += f"-{args.vision_engine}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text("\n".join(lines) + f"\n\n![throughput vs batch size]({stem}.png)\n")
    print("\n".join(lines))
    plot(args.out / f"{stem}.png", runs, engine_batches, args, rate)


def _mean(results: list[Result], name: str, spec: str) -> str:
    values = [getattr(result, name) for result in results if getattr(result, name) is not None]
    return format(statistics.mean(values), spec) if values else ""


def plot(path: Path, runs: dict[str, list[Result]], engine_batches: list[int], args: argparse.Namespace, rate) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(engine_batches, [rate(engine_name(b)) for b in engine_batches], "o-", label="blipq engine")
    axes.axhline(rate("reference-loop"), color="grey", linestyle="--", label="reference, one at a time (fp32)")
    axes.axhline(rate(f"reference-batch-{args.reference_batch}"), color="black", linestyle=":",
                 label=f"reference, batch {args.reference_batch}")  # fmt: skip
    axes.set_xlabel("batch size")
    axes.set_ylabel("images / s")
    axes.set_title(f"BLIP {args.size}, beam {args.beams}, {args.tokens} tokens, {args.device} {args.dtype}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
