"""The `blipq` command: parses arguments into settings and delegates; owns logging setup.

The only code that imports both the gateway and the inference side (heavy imports stay inside commands).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from blipq import __version__
from blipq.cli_options import (
    BatchWaitOpt,
    BrokerOpt,
    CheckpointsOpt,
    DecoderOpt,
    DecodeThreadsOpt,
    DeviceOpt,
    DtypeOpt,
    FastDecodeOpt,
    MaxBatchOpt,
    ModelOpt,
    TorchThreadsOpt,
    VisionEngineOpt,
    generation_option,
    setting_option,
)
from blipq.contract.errors import BlipqError, InvalidOptions
from blipq.contract.options import CaptionOptions
from blipq.contract.settings import SharedSettings
from blipq.gateway.settings import GatewaySettings
from blipq.inference.settings import InferenceSettings
from blipq.inference.writers import OutputFormat

app = typer.Typer(
    name="blipq",
    help="Image captioning with Salesforce BLIP: a batching HTTP service and an offline labelling tool.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)
AnySettings = TypeVar("AnySettings", bound=SharedSettings)


def _settings(kind: type[AnySettings], **overrides: Any) -> AnySettings:
    """Flags override `BLIPQ_*` environment variables, which override defaults."""
    try:
        return kind(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors())
        _fail(f"invalid configuration: {problems}", code=2)


def _fail(message: str, *, code: int = 1) -> NoReturn:
    # The message is text, not markup: "blipq[inference]" or a path with brackets must print as it is.
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
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
    batch_size: Annotated[
        int | None, setting_option(InferenceSettings, "max_batch", "--batch-size", "Images per model call.", "-b")
    ] = None,
    model: ModelOpt = None,
    checkpoints_dir: CheckpointsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    vision_engine: VisionEngineOpt = None,
    num_beams: Annotated[int | None, generation_option("num_beams", "Beam width; 1 = greedy.")] = None,
    max_length: Annotated[int | None, generation_option("max_length", "Max tokens, prompt included.")] = None,
    min_length: Annotated[int | None, generation_option("min_length", "Min tokens, prompt included.")] = None,
    prompt: Annotated[str | None, generation_option("prompt", "Caption prefix, removed from the output.")] = None,
    repetition_penalty: Annotated[float | None, generation_option("repetition_penalty", "1.0 = none.")] = None,
    decode_threads: DecodeThreadsOpt = None,
    torch_threads: TorchThreadsOpt = None,
    fast_decode: FastDecodeOpt = None,
    decoder: DecoderOpt = None,
) -> None:
    """Caption image files, folders and URLs; one output row per image (path, caption or error)."""
    from blipq.inference.sources import expand_inputs
    from blipq.offline import caption_to_output

    settings = _settings(
        InferenceSettings,
        model=model,
        checkpoints_dir=checkpoints_dir,
        device=device,
        dtype=dtype,
        max_batch=batch_size,
        vision_engine=vision_engine,
        decode_threads=decode_threads,
        torch_threads=torch_threads,
        fast_decode=fast_decode,
        decoder=decoder,
    )
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
        failed = caption_to_output(settings, options, sources, output_format, out, console=stderr)
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


@app.command("test-model")
def write_test_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.", show_default=False)],
    size: Annotated[str, typer.Option(help="tiny (fast, for tests), base or large (Salesforce shapes).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same weights.")] = 0,
) -> None:
    """Write a real BLIP checkpoint with random weights (for tests and benchmarks, not for real captions)."""
    from blipq.engine_build.synthetic import SHAPES, write_test_checkpoint
    from blipq.inference.engine import quiet_transformers

    if size not in SHAPES:
        _fail(f"--size must be one of {', '.join(SHAPES)} (got {size!r})", code=2)
    quiet_transformers()
    with stderr.status(f"writing a random {size} BLIP checkpoint"):
        write_test_checkpoint(directory, size=size, seed=seed)  # type: ignore[arg-type]
    stderr.print(f"wrote a random-weight {size} BLIP checkpoint to {directory}", highlight=False)


@app.command("build-engine")
def build_engine(
    model: ModelOpt = None,
    checkpoints_dir: CheckpointsOpt = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the engine takes.")] = 64,
    opt_batch: Annotated[int, typer.Option("--opt-batch", help="The batch TensorRT tunes for.")] = 32,
    out: Annotated[
        Path | None, typer.Option("--out", help="Engine folder. Default: <checkpoint>/engines/<sm>-trt<version>.")
    ] = None,
) -> None:
    """Compile the vision encoder to a TensorRT fp16 engine for this GPU, validate it and write it with its
    manifest (needs CUDA and pip install 'blipq[tensorrt]')."""
    if not 1 <= opt_batch <= max_batch:
        _fail(f"--opt-batch must be between 1 and --max-batch ({max_batch}), not {opt_batch}", code=2)
    from blipq.engine_build.checkpoint import resolve_checkpoint
    from blipq.engine_build.tensorrt_build import build_engine as build
    from blipq.engine_build.tensorrt_build import missing_requirement

    missing = missing_requirement()
    if missing is not None:
        _fail(missing)
    settings = _settings(InferenceSettings, model=model, checkpoints_dir=checkpoints_dir)
    try:
        checkpoint = resolve_checkpoint(settings.model, settings.checkpoints_dir)
        with stderr.status(f"building a TensorRT engine for {checkpoint}"):
            folder = build(checkpoint, max_batch=max_batch, opt_batch=opt_batch, out=out)
    except BlipqError as exc:
        _fail(exc.message)
    stderr.print(f"engine ready in {folder}", highlight=False)


@app.command()
def download(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Hugging Face hub id. \\[default: BLIPQ_MODEL, else Salesforce/blip-image-captioning-large]",
            show_default=False,
        ),
    ] = None,
    checkpoints_dir: CheckpointsOpt = None,
) -> None:
    """Download a hub checkpoint into the checkpoints directory (once; later runs read it from disk)."""
    from blipq.engine_build.checkpoint import resolve_checkpoint

    settings = _settings(InferenceSettings, model=model, checkpoints_dir=checkpoints_dir)
    try:
        path = resolve_checkpoint(settings.model, settings.checkpoints_dir)
    except BlipqError as exc:
        _fail(exc.message)
    stderr.print(f"checkpoint ready in {path}", highlight=False)


@app.command()
def serve(
    host: Annotated[str | None, setting_option(GatewaySettings, "host", "--host", "Listen address.")] = None,
    port: Annotated[int | None, setting_option(GatewaySettings, "port", "--port", "Listen port.")] = None,
    store: Annotated[
        str | None,
        setting_option(
            GatewaySettings,
            "store",
            "--store",
            "Result store: sqlite:///path/to/file.db or postgresql://user:password@host/db (with --broker).",
        ),
    ] = None,
    broker: BrokerOpt = None,
    gateway_id: Annotated[
        str | None, setting_option(GatewaySettings, "gateway_id", "--gateway-id", "Names this gateway's reply queue.")
    ] = None,
    model: ModelOpt = None,
    checkpoints_dir: CheckpointsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    vision_engine: VisionEngineOpt = None,
    max_batch: MaxBatchOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    decode_threads: DecodeThreadsOpt = None,
    torch_threads: TorchThreadsOpt = None,
    fast_decode: FastDecodeOpt = None,
    decoder: DecoderOpt = None,
) -> None:
    """Run the HTTP gateway: with --broker it publishes jobs to RabbitMQ for `blipq worker`s; without,
    the model runs in this process too (the embedded mode)."""
    gateway = _settings(GatewaySettings, host=host, port=port, store=store, broker_url=broker, gateway_id=gateway_id)
    inference = _model_settings(
        model, checkpoints_dir, device, dtype, max_batch, batch_wait_ms, vision_engine=vision_engine,
        decode_threads=decode_threads, torch_threads=torch_threads, fast_decode=fast_decode, decoder=decoder,
    )  # fmt: skip
    try:
        if gateway.broker_url is not None:
            from blipq.serving import run_gateway

            run_gateway(gateway)
            return
        try:
            from blipq.embedded import run_embedded
        except ModuleNotFoundError as exc:
            _fail(
                f"the embedded mode runs the model in this process and needs {exc.name}: pip install 'blipq[inference]'"
            )
        run_embedded(gateway, inference)
    except BlipqError as exc:
        _fail(exc.message)


@app.command()
def worker(
    broker: BrokerOpt = None,
    model: ModelOpt = None,
    checkpoints_dir: CheckpointsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    vision_engine: VisionEngineOpt = None,
    max_batch: MaxBatchOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    metrics_port: Annotated[
        int | None,
        setting_option(InferenceSettings, "metrics_port", "--metrics-port", "Prometheus metrics port; 0 = off."),
    ] = None,
    decode_threads: DecodeThreadsOpt = None,
    torch_threads: TorchThreadsOpt = None,
    fast_decode: FastDecodeOpt = None,
    decoder: DecoderOpt = None,
) -> None:
    """Run one inference worker consuming jobs from RabbitMQ (one per GPU). SIGTERM answers what is in hand."""
    settings = _model_settings(
        model, checkpoints_dir, device, dtype, max_batch, batch_wait_ms, broker=broker, metrics_port=metrics_port,
        vision_engine=vision_engine, decode_threads=decode_threads, torch_threads=torch_threads,
        fast_decode=fast_decode, decoder=decoder,
    )  # fmt: skip
    if settings.broker_url is None:
        _fail("blipq worker consumes jobs from RabbitMQ: give --broker amqp://user:pass@host:5672/vhost", code=2)
    from blipq.worker import run_worker

    try:
        run_worker(settings)
    except BlipqError as exc:
        _fail(exc.message, code=3)


def _model_settings(
    model: str | None,
    checkpoints_dir: Path | None,
    device: str | None,
    dtype: str | None,
    max_batch: int | None,
    batch_wait_ms: int | None,
    *,
    broker: str | None = None,
    metrics_port: int | None = None,
    vision_engine: str | None = None,
    decode_threads: int | None = None,
    torch_threads: int | None = None,
    fast_decode: bool | None = None,
    decoder: str | None = None,
) -> InferenceSettings:
    return _settings(
        InferenceSettings, model=model, checkpoints_dir=checkpoints_dir, device=device, dtype=dtype,
        max_batch=max_batch, batch_wait_ms=batch_wait_ms, broker_url=broker, metrics_port=metrics_port,
        vision_engine=vision_engine, decode_threads=decode_threads, torch_threads=torch_threads,
        fast_decode=fast_decode, decoder=decoder,
    )  # fmt: skip


@app.command()
def healthcheck(
    url: Annotated[
        str | None,
        typer.Option("--url", help="Default: http://127.0.0.1:<BLIPQ_PORT>/healthz, the server on this machine."),
    ] = None,
    worker: Annotated[
        bool,
        typer.Option("--worker", help="Check `blipq worker` instead: its metrics endpoint on BLIPQ_METRICS_PORT."),
    ] = False,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Seconds to wait for the answer.")] = 3.0,
) -> None:
    """Exit 0 when the server answers /healthz with 200, else 1 (for container health checks).

    A worker serves its metrics once the model is loaded, so an answer there means it is up."""
    import httpx

    if url is not None:
        target = url
    elif worker:
        metrics_port = _settings(InferenceSettings).metrics_port
        if not metrics_port:
            _fail("the worker serves no metrics endpoint to check: set BLIPQ_METRICS_PORT", code=2)
        target = f"http://127.0.0.1:{metrics_port}/metrics"
    else:
        target = f"http://127.0.0.1:{_settings(GatewaySettings).port}/healthz"
    try:
        status = httpx.get(target, timeout=timeout_s).status_code
    except httpx.HTTPError as exc:
        _fail(f"{target}: {type(exc).__name__}: {exc}")
    if status != 200:
        _fail(f"{target} answered HTTP {status}")
