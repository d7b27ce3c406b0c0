"""The `blipq` command: parses arguments into Settings and delegates; owns logging setup."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from blipq import __version__
from blipq.config import Settings
from blipq.errors import BlipqError, InvalidOptions
from blipq.jobs import CaptionOptions
from blipq.writers import OutputFormat

app = typer.Typer(
    name="blipq",
    help="Image captioning with Salesforce BLIP: a batching HTTP service and an offline labelling tool.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)


def _setting(name: str, flag: str, summary: str, *aliases: str) -> Any:
    """An option for a `Settings` field: left out, the field's environment variable or default applies,
    and the help says both (read from Settings, so it stays true)."""
    default = Settings.model_fields[name].default
    # "\[" keeps rich from taking the brackets for markup.
    help_text = f"{summary} \\[env BLIPQ_{name.upper()}; default: {default}]"
    return typer.Option(flag, *aliases, help=help_text, show_default=False)


def _generation(name: str, summary: str) -> Any:
    """An option for a `CaptionOptions` field, its default read from there."""
    default = CaptionOptions.model_fields[name].default
    return typer.Option(f"--{name.replace('_', '-')}", help=f"{summary} \\[default: {default!r}]", show_default=False)


ModelOpt = Annotated[str | None, _setting("model", "--model", "Checkpoint directory or hub id.")]
CheckpointsOpt = Annotated[
    Path | None, _setting("checkpoints_dir", "--checkpoints-dir", "Where hub checkpoints are stored.")
]
DeviceOpt = Annotated[str | None, _setting("device", "--device", "auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str | None, _setting("dtype", "--dtype", "auto, fp32, fp16 or bf16.")]
MaxBatchOpt = Annotated[int | None, _setting("max_batch", "--max-batch", "Images per model call.")]


def _settings(**overrides: Any) -> Settings:
    """Flags override `BLIPQ_*` environment variables, which override defaults."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors())
        _fail(f"invalid configuration: {problems}", code=2)


def _fail(message: str, *, code: int = 1) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _version(value: bool) -> None:
    if value:
        typer.echo(f"blipq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _configure_logging(verbose)


@app.command()
def caption(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or http(s) URLs.", show_default=False)],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = "jsonl",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write rows to this file instead of stdout ('-' is stdout).")
    ] = None,
    batch_size: Annotated[int | None, _setting("max_batch", "--batch-size", "Images per model call.", "-b")] = None,
    model: ModelOpt = None,
    checkpoints_dir: CheckpointsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    num_beams: Annotated[int | None, _generation("num_beams", "Beam width; 1 = greedy.")] = None,
    max_length: Annotated[int | None, _generation("max_length", "Max tokens, prompt included.")] = None,
    min_length: Annotated[int | None, _generation("min_length", "Min tokens, prompt included.")] = None,
    prompt: Annotated[str | None, _generation("prompt", "Caption prefix, removed from the output.")] = None,
    repetition_penalty: Annotated[float | None, _generation("repetition_penalty", "1.0 = none.")] = None,
    decode_threads: Annotated[int, typer.Option(help="Threads decoding images ahead of the model.")] = 2,
) -> None:
    """Caption image files, folders and URLs; one output row per image (path, caption or error)."""
    from blipq.sources import expand_inputs

    settings = _settings(model=model, checkpoints_dir=checkpoints_dir, device=device, dtype=dtype, max_batch=batch_size)
    try:
        options = CaptionOptions.build(
            num_beams=num_beams,
            max_length=max_length,
            min_length=min_length,
            prompt=prompt,
            repetition_penalty=repetition_penalty,
        )
    except BlipqError as exc:
        _fail(exc.message, code=2)
    out = None if out == Path("-") else out
    if out is not None:
        _check_output_file(out)
    sources = expand_inputs(inputs, recursive=recursive)
    if not sources:
        _fail("no images found in the given paths (folders are scanned for .jpg .png .webp .gif .bmp .tif)")
    try:
        failed = _caption_to_output(settings, options, sources, output_format, out, decode_threads)
    except BlipqError as exc:
        _fail(exc.message, code=2 if isinstance(exc, InvalidOptions) else 1)
    if failed == len(sources):
        _fail(f"no image was captioned: all {failed} failed (the reasons are above)")
    stderr.print(f"captioned {len(sources) - failed} of {len(sources)} images; {failed} failed", highlight=False)


def _check_output_file(out: Path) -> None:
    """Refuse an output path that cannot be written before the model is loaded, in one line."""
    if out.is_dir():
        _fail(f"--out {out} is a directory; give a file name, e.g. {out / 'captions.jsonl'}", code=2)
    folder = out.parent
    if not folder.is_dir():
        _fail(f"--out {out}: the folder {folder} does not exist", code=2)
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        _fail(f"--out {out}: permission denied", code=2)


def _caption_to_output(
    settings: Settings,
    options: CaptionOptions,
    sources: list[str],
    output_format: OutputFormat,
    out: Path | None,
    decode_threads: int,
) -> int:
    from functools import partial

    from blipq.fetch import FetchPolicy
    from blipq.images import ImagePolicy
    from blipq.model import CaptionEngine, resolve_checkpoint
    from blipq.model.engine import quiet_transformers
    from blipq.pipeline import caption_sources
    from blipq.sources import read_source
    from blipq.writers import open_writer

    quiet_transformers()
    checkpoint = resolve_checkpoint(settings.model, settings.checkpoints_dir)
    with stderr.status(f"loading {checkpoint}"):
        engine = CaptionEngine.load(checkpoint, device=settings.device, dtype=settings.dtype)
    engine.check_options(options)
    # The command line fetches the user's own URLs: private and loopback addresses are fine here.
    fetch = FetchPolicy(timeout_s=settings.fetch_timeout_s, max_bytes=settings.max_fetch_bytes, public_only=False)
    read = partial(read_source, fetch=fetch)
    failed = 0
    with ExitStack() as stack:
        stream = stack.enter_context(out.open("w", encoding="utf-8", newline="")) if out else sys.stdout
        writer = open_writer(output_format, stream)
        progress = stack.enter_context(
            Progress(
                TextColumn("captioning"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=stderr,
                transient=False,
            )
        )
        task = progress.add_task("captioning", total=len(sources))
        rows = caption_sources(
            engine,
            sources,
            options,
            read=read,
            policy=ImagePolicy.of(settings, limit_bytes=False),
            batch_size=settings.max_batch,
            decode_threads=decode_threads,
        )
        for row in rows:
            writer.write(row)
            if row.error:
                failed += 1
                progress.console.print(f"[yellow]skipped[/] {row.source}: {row.error.message}", highlight=False)
            progress.advance(task)
    return failed


@app.command("test-model")
def write_test_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.", show_default=False)],
    size: Annotated[str, typer.Option(help="tiny (fast, for tests), base or large (Salesforce shapes).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same weights.")] = 0,
) -> None:
    """Write a real BLIP checkpoint with random weights (for tests and benchmarks, not for real captions)."""
    from blipq.model.engine import quiet_transformers
    from blipq.model.synthetic import SHAPES, write_test_checkpoint

    if size not in SHAPES:
        _fail(f"--size must be one of {', '.join(SHAPES)} (got {size!r})", code=2)
    quiet_transformers()
    with stderr.status(f"writing a random {size} BLIP checkpoint"):
        write_test_checkpoint(directory, size=size, seed=seed)  # type: ignore[arg-type]
    stderr.print(f"wrote a random-weight {size} BLIP checkpoint to {directory}", highlight=False)


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="Hugging Face hub id.")] = "Salesforce/blip-image-captioning-large",
    checkpoints_dir: CheckpointsOpt = None,
) -> None:
    """Download a hub checkpoint into the checkpoints directory (once; later runs read it from disk)."""
    from blipq.model import resolve_checkpoint

    settings = _settings(model=model, checkpoints_dir=checkpoints_dir)
    try:
        path = resolve_checkpoint(settings.model, settings.checkpoints_dir)
    except BlipqError as exc:
        _fail(exc.message)
    stderr.print(f"checkpoint ready in {path}", highlight=False)


QueueOpt = Annotated[str | None, _setting("queue", "--queue", "Queue URL: sqlite:///path.db or redis://host:port/db.")]
BatchWaitOpt = Annotated[int | None, _setting("batch_wait_ms", "--batch-wait-ms", "Milliseconds to fill a batch.")]
LeaseOpt = Annotated[float | None, _setting("lease_s", "--lease-s", "Seconds an image stays claimed without renewal.")]


@app.command()
def serve(
    host: Annotated[str | None, _setting("host", "--host", "Listen address.")] = None,
    port: Annotated[int | None, _setting("port", "--port", "Listen port.")] = None,
    queue: QueueOpt = None,
    workers: Annotated[
        int | None, _setting("workers", "--workers", "Worker processes to supervise; 0 = API only.")
    ] = None,
    model: ModelOpt = None,
    checkpoints_dir: CheckpointsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_batch: MaxBatchOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    lease_s: LeaseOpt = None,
) -> None:
    """Run the HTTP API with the queue and supervised worker processes (one per GPU when several)."""
    import uvicorn

    from blipq.api import create_app
    from blipq.model.checkpoint import resolve_checkpoint
    from blipq.queue import open_queue
    from blipq.supervisor import SupervisedProcess, worker_command

    settings = _settings(
        host=host, port=port, queue=queue, workers=workers, model=model, checkpoints_dir=checkpoints_dir,
        device=device, dtype=dtype, max_batch=max_batch, batch_wait_ms=batch_wait_ms, lease_s=lease_s,
    )  # fmt: skip
    supervised: list[SupervisedProcess] = []

    def stop_workers() -> None:
        for process in supervised:
            process.stop()

    try:
        job_queue = open_queue(settings.queue, max_attempts=settings.max_attempts)
        # Resolve (and download) the checkpoint once here, so workers never race to download it.
        checkpoint = resolve_checkpoint(settings.model, settings.checkpoints_dir) if settings.workers else None
        # Workers are stopped in the app's shutdown: uvicorn re-raises SIGTERM once it returns.
        app = create_app(settings, job_queue, on_shutdown=stop_workers)
    except BlipqError as exc:
        _fail(exc.message)
    supervised += [
        SupervisedProcess(f"worker-{index}", worker_command(_worker_arguments(settings, str(checkpoint), index)))
        for index in range(settings.workers)
    ]
    for process in supervised:
        process.start()
    # On SIGTERM uvicorn stops accepting, lets in-flight requests finish (up to the timeout), then
    # runs the app's shutdown, which drains the workers.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


def _worker_arguments(settings: Settings, checkpoint: str, index: int) -> list[str]:
    device = settings.device
    if device == "auto" and settings.workers > 1:
        from blipq.model.device import gpu_count

        gpus = gpu_count()
        device = f"cuda:{index % gpus}" if gpus > 1 else device
    return [
        "--queue", settings.queue, "--model", checkpoint, "--device", device, "--dtype", settings.dtype,
        "--max-batch", str(settings.max_batch), "--batch-wait-ms", str(settings.batch_wait_ms),
        "--lease-s", str(settings.lease_s),
    ]  # fmt: skip


@app.command()
def worker(
    queue: QueueOpt = None,
    model: ModelOpt = None,
    checkpoints_dir: CheckpointsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_batch: MaxBatchOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    lease_s: LeaseOpt = None,
) -> None:
    """Run one worker: claim images from the queue, caption them in batches. SIGTERM drains and exits."""
    import signal
    import threading

    from blipq.fetch import FetchPolicy
    from blipq.images import ImagePolicy
    from blipq.model import CaptionEngine, resolve_checkpoint
    from blipq.model.engine import quiet_transformers
    from blipq.queue import open_queue
    from blipq.supervisor import exit_with_supervisor
    from blipq.worker import Worker, WorkerConfig

    exit_with_supervisor()
    settings = _settings(
        queue=queue, model=model, checkpoints_dir=checkpoints_dir, device=device, dtype=dtype,
        max_batch=max_batch, batch_wait_ms=batch_wait_ms, lease_s=lease_s,
    )  # fmt: skip
    quiet_transformers()
    try:
        job_queue = open_queue(settings.queue, max_attempts=settings.max_attempts)
        checkpoint = resolve_checkpoint(settings.model, settings.checkpoints_dir)
        engine = CaptionEngine.load(checkpoint, device=settings.device, dtype=settings.dtype)
    except BlipqError as exc:
        _fail(exc.message, code=3)
    config = WorkerConfig(
        max_batch=settings.max_batch,
        batch_wait_ms=settings.batch_wait_ms,
        lease_s=settings.lease_s,
        fetch=FetchPolicy(
            timeout_s=settings.fetch_timeout_s,
            max_bytes=settings.max_fetch_bytes,
            allow_networks=settings.fetch_allow_networks,
        ),
        policy=ImagePolicy.of(settings, limit_bytes=False),
    )
    # The handler only records the signal: setting an Event from a handler can deadlock on the
    # Event's own lock, so the main thread sets it while the worker runs in another thread.
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: signals.append(received))
    logging.getLogger("blipq").setLevel(logging.INFO)
    logging.getLogger(__name__).info("worker ready: %s on %s", checkpoint, engine.device)
    stop = threading.Event()
    runner = threading.Thread(
        target=Worker(job_queue, engine, config, model_name=settings.model).run, args=(stop,), name="blipq-worker"
    )
    runner.start()
    while runner.is_alive():
        runner.join(0.2)
        if signals and not stop.is_set():
            logging.getLogger(__name__).info("signal %d: finishing the images in hand, then exiting", signals[0])
            stop.set()
    job_queue.close()


@app.command()
def healthcheck(
    url: Annotated[
        str | None,
        typer.Option("--url", help="Default: http://127.0.0.1:<BLIPQ_PORT>/healthz, the server on this machine."),
    ] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Seconds to wait for the answer.")] = 3.0,
) -> None:
    """Exit 0 when the server answers /healthz with 200, else 1 (for container health checks)."""
    import httpx

    target = url or f"http://127.0.0.1:{_settings().port}/healthz"
    try:
        status = httpx.get(target, timeout=timeout_s).status_code
    except httpx.HTTPError as exc:
        _fail(f"{target}: {type(exc).__name__}: {exc}")
    if status != 200:
        _fail(f"{target} answered HTTP {status}")
