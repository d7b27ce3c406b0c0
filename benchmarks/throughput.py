"""Throughput and latency of BLIP captioning: the transformers reference against blipq, same weights and inputs.

Contenders, each run in its own subprocess (so peak memory is its own), alternating over rounds:
  reference-loop      transformers BlipProcessor + generate, one image at a time, fp32
                      (what the original project did, with the model loaded once)
  reference-batch-N   the same, N images per generate call, --dtype
  engine-batch-N      blipq's CaptionEngine through its batching pipeline (decode on threads), --dtype
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
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

CACHE = Path(".bench")
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (2000, 1500)]
PROMPT = "a picture of "


@dataclass
class Result:
    contender: str
    batch: int
    images: int
    seconds: float
    peak_rss_mb: float
    gpu_peak_mb: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    idle_latency_ms: float | None = None
    mean_batch: float | None = None  # images per model call while timed (http: read from the server's /metrics)
    model_busy: float | None = None  # share of the timed wall clock the model was running (http only)
    token_ids: list[list[int]] = field(default_factory=list)


# -- inputs ------------------------------------------------------------------------------------


def make_inputs(count: int) -> list[Path]:
    from PIL import Image, ImageFilter

    folder = CACHE / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo{index:03d}.jpg"
        if not path.exists():
            width, height = SIZES[index % len(SIZES)]
            rng = np.random.default_rng(index)
            # Smooth noise compresses like a photo (a few hundred KB), unlike white noise.
            small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((width, height), Image.BICUBIC).filter(ImageFilter.DETAIL)
            image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def checkpoint(size: str) -> Path:
    from blipq.engine_build.synthetic import write_test_checkpoint

    path = CACHE / f"blip-{size}"
    if not (path / "model.safetensors").exists():
        write_test_checkpoint(path, size=size)  # type: ignore[arg-type]
    return path


# -- contenders (run inside a subprocess) ------------------------------------------------------


def run_reference(model_dir: Path, paths: list[Path], batch: int, dtype: str, device: str, tokens: int) -> Result:
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = BlipForConditionalGeneration.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    processor = BlipProcessor.from_pretrained(model_dir)
    length = len(processor.tokenizer(PROMPT)["input_ids"]) - 1 + tokens
    blobs = [path.read_bytes() for path in paths]

    def caption(chunk: list[bytes]) -> list[list[int]]:
        import io

        images = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in chunk]
        inputs = processor(images=images, text=[PROMPT] * len(images), return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(torch_dtype)
        with torch.inference_mode():
            output = model.generate(**inputs, num_beams=BEAMS, max_length=length, min_length=length)
        ids: list[list[int]] = output.tolist()
        return ids

    caption(blobs[:batch])  # warm-up
    _sync(device)
    started = time.perf_counter()
    ids: list[list[int]] = []
    for start in range(0, len(blobs), batch):
        ids += caption(blobs[start : start + batch])
    _sync(device)
    name = "reference-loop" if batch == 1 and dtype == "fp32" else f"reference-batch-{batch}"
    return Result(name, batch, len(blobs), time.perf_counter() - started, _peak_rss(), _gpu_peak(device), token_ids=ids)


def engine_name(batch: int) -> str:
    return f"engine-batch-{batch}" if VISION == "torch" else f"engine-{VISION}-batch-{batch}"


def run_engine(model_dir: Path, paths: list[Path], batch: int, dtype: str, device: str, tokens: int) -> Result:
    from blipq.contract.images import ImagePolicy
    from blipq.contract.options import CaptionOptions
    from blipq.inference.engine import CaptionEngine
    from blipq.inference.offline import caption_sources

    engine = CaptionEngine.load(
        model_dir, device=device, dtype=dtype, vision_engine="tensorrt" if VISION == "tensorrt" else "torch"
    )
    if VISION == "exported":
        from blipq.engine_build.export import export_vision_encoder

        program = export_vision_encoder(engine.model, max_batch=max(batch, 2), device=engine.device, dtype=engine.dtype)
        engine.use_vision_encoder(program.module(), "exported")
    length = engine.prompt_length(PROMPT) + tokens
    options = CaptionOptions(num_beams=BEAMS, max_length=length, min_length=length)
    blobs = {str(path): path.read_bytes() for path in paths}
    sources = list(blobs)
    run = partial(
        caption_sources, engine, options=options, read=blobs.__getitem__, policy=ImagePolicy(), batch_size=batch
    )
    list(run(sources[:batch]))  # warm-up
    _sync(device)
    started = time.perf_counter()
    rows = list(run(sources))
    _sync(device)
    seconds = time.perf_counter() - started
    # Token ids for the match rate: the same images once more, outside the timing.
    ids = [ids for start in range(0, len(paths), batch) for ids in engine.generate(
        [engine.prepare(_decode(blobs[s])) for s in sources[start : start + batch]], options)]  # fmt: skip
    assert all(row.error is None for row in rows)
    calls = -(-len(paths) // batch)
    return Result(engine_name(batch), batch, len(paths), seconds, _peak_rss(), _gpu_peak(device), token_ids=ids,
                  mean_batch=len(paths) / calls)  # fmt: skip


def run_http(model_dir: Path, paths: list[Path], batch: int, dtype: str, device: str, tokens: int) -> Result:
    import httpx

    from tests.server import Server

    scratch = CACHE / "http"
    server = Server(model_dir, scratch, "--max-batch", str(batch), "--dtype", dtype)
    server.command[server.command.index("--device") + 1] = device
    server.start(timeout_s=600)
    try:
        from blipq.inference.engine import CaptionEngine

        length = CaptionEngine.load(model_dir, device="cpu").prompt_length(PROMPT) + tokens
        options = {"num_beams": BEAMS, "max_length": length, "min_length": length}
        blobs = [path.read_bytes() for path in paths]

        def one(blob: bytes, client: httpx.Client) -> float:
            import base64

            started = time.perf_counter()
            body = {"images": [{"b64": base64.b64encode(blob).decode()}], "options": options}
            response = client.post("/v1/captions", json=body)
            assert response.status_code == 200, response.text
            return (time.perf_counter() - started) * 1000

        with httpx.Client(base_url=server.url, timeout=3600) as client:
            one(blobs[0], client)  # warm-up
            time.sleep(1)
            idle = statistics.median(one(blobs[0], client) for _ in range(3))
            local = threading.local()

            def call(blob: bytes) -> float:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(base_url=server.url, timeout=3600)
                return one(blob, local.client)

            before = _model_metrics(client)
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
                latencies = list(pool.map(call, blobs))
            seconds = time.perf_counter() - started
            after = _model_metrics(client)
        assert server.process is not None
        rss = _vm_hwm_mb(server.process.pid)  # the model runs in the server process (embedded mode)
    finally:
        server.stop()
    calls = after["blipq_batch_size_count"] - before["blipq_batch_size_count"]
    mean_batch = (after["blipq_batch_size_sum"] - before["blipq_batch_size_sum"]) / calls
    busy = (after["blipq_model_seconds_sum"] - before["blipq_model_seconds_sum"]) / seconds
    return Result("http", batch, len(blobs), seconds, rss, None, latencies, idle, mean_batch, busy)


def _model_metrics(client) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The server's model-call counters, to tell small batches from a slow model under load."""
    wanted = ("blipq_batch_size_sum", "blipq_batch_size_count", "blipq_model_seconds_sum")
    lines = [line.split() for line in client.get("/metrics").text.splitlines() if line.startswith(wanted)]
    return {name: float(value) for name, value in lines}


def _decode(blob: bytes):  # type: ignore[no-untyped-def]
    from blipq.inference.decode import decode_image

    return decode_image(blob)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _gpu_peak(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


BEAMS = 3
CONCURRENCY = 8
#: The engine contenders' vision encoder: torch (eager), exported (torch.export, no TensorRT) or tensorrt.
VISION = "torch"
CONTENDERS = {"reference": run_reference, "engine": run_engine, "http": run_http}


# -- orchestration -----------------------------------------------------------------------------


def run_in_subprocess(args: argparse.Namespace, kind: str, batch: int, dtype: str) -> Result:
    command = [
        sys.executable, "-m", "benchmarks.throughput", "--one", kind, "--batch", str(batch), "--dtype", dtype,
        "--size", args.size, "--images", str(args.images), "--tokens", str(args.tokens), "--beams", str(args.beams),
        "--device", args.device, "--concurrency", str(args.concurrency), "--vision-engine", args.vision_engine,
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise RuntimeError(f"{kind} batch {batch} failed:\n{output.stderr[-4000:]}")
    return Result(**json.loads(output.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption (forced)")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="dtype of the batched reference, the engine and http")
    parser.add_argument("--reference-batch", type=int, default=8)
    parser.add_argument("--engine-batches", default="1,4,8,16", help="comma-separated batch sizes")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP clients in flight")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument(
        "--vision-engine",
        choices=["torch", "exported", "tensorrt"],
        default="torch",
        help="the engine rows' vision encoder (tensorrt needs an engine from `blipq build-engine`)",
    )
    parser.add_argument("--one", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global BEAMS, CONCURRENCY, VISION
    BEAMS, CONCURRENCY, VISION = args.beams, args.concurrency, args.vision_engine
    paths = make_inputs(args.images)
    model_dir = checkpoint(args.size)
    if args.one:
        from blipq.inference.engine import quiet_transformers

        quiet_transformers()
        result = CONTENDERS[args.one](model_dir, paths, args.batch, args.dtype, args.device, args.tokens)
        print(json.dumps(asdict(result)))
        return
    plan = [("reference", 1, "fp32"), ("reference", args.reference_batch, args.dtype)]
    engine_batches = [int(b) for b in args.engine_batches.split(",")]
    plan += [("engine", b, args.dtype) for b in engine_batches]
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


def report(args: argparse.Namespace, runs: dict[str, list[Result]], engine_batches: list[int]) -> None:
    import torch
    import transformers

    def rate(name: str) -> float:
        return statistics.median(r.images / r.seconds for r in runs[name])

    loop = rate("reference-loop")
    batched = rate(f"reference-batch-{args.reference_batch}")
    reference_ids = runs["reference-loop"][0].token_ids
    lines = [
        f"# Throughput: BLIP {args.size}, beam {args.beams}, {args.tokens} tokens, {args.device} {args.dtype},"
        f" {args.vision_engine} vision encoder",
        "",
        f"- command: `python -m benchmarks.throughput {' '.join(sys.argv[1:])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        f"- versions: python {platform.python_version()}, torch {torch.__version__},"
        f" transformers {transformers.__version__}",
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
