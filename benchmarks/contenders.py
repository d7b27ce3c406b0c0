"""The contenders of the throughput benchmark, each run inside a subprocess of its own (so its peak memory is
its own): transformers' reference, blipq's engine, and a real `blipq serve` driven over HTTP."""

from __future__ import annotations

import resource
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from benchmarks.inputs import CACHE, PROMPT


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


def engine_name(batch: int, decoder: str = "blipq") -> str:
    parts = ["engine", *([] if VISION == "torch" else [VISION]), *([] if decoder == "blipq" else [decoder])]
    return "-".join([*parts, "batch", str(batch)])


def run_engine(
    model_dir: Path,
    paths: list[Path],
    batch: int,
    dtype: str,
    device: str,
    tokens: int,
    decoder: str = "blipq",
    fixed_slots: bool | None = None,
) -> Result:
    from blipq.contract.images import ImagePolicy
    from blipq.contract.options import CaptionOptions
    from blipq.inference.engine import CaptionEngine
    from blipq.inference.offline import caption_sources

    engine = CaptionEngine.load(
        model_dir,
        device=device,
        dtype=dtype,
        vision_engine="tensorrt" if VISION == "tensorrt" else "torch",
        torch_threads=TORCH_THREADS,
        decoder=decoder,  # type: ignore[arg-type]
        fixed_slots=fixed_slots,
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
    label = decoder if fixed_slots is None else "eager-steps"
    return Result(engine_name(batch, label), batch, len(paths), seconds, _peak_rss(), _gpu_peak(device),
                  token_ids=ids, mean_batch=len(paths) / calls)  # fmt: skip


def run_http(model_dir: Path, paths: list[Path], batch: int, dtype: str, device: str, tokens: int) -> Result:
    import httpx

    from tests.server import Server

    scratch = CACHE / "http"
    server = Server(
        model_dir, scratch, "--max-batch", str(batch), "--dtype", dtype, "--torch-threads", str(TORCH_THREADS)
    )
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
TORCH_THREADS = 0  # blipq's --torch-threads for the engine and http contenders


def configure(beams: int, concurrency: int, vision: str, torch_threads: int) -> None:
    """The settings every contender of this run shares (from the command line)."""
    global BEAMS, CONCURRENCY, VISION, TORCH_THREADS
    BEAMS, CONCURRENCY, VISION, TORCH_THREADS = beams, concurrency, vision, torch_threads


CONTENDERS = {
    "reference": run_reference,
    "engine": run_engine,
    "engine-transformers": partial(run_engine, decoder="transformers"),  # the engine with transformers' search
    "engine-eager-steps": partial(run_engine, fixed_slots=False),  # on CUDA: the decoder's steps without graphs
    "http": run_http,
}
