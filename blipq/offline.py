"""`blipq caption`: load the model once, caption files, folders and URLs, write one row per image."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from blipq.contract.options import CaptionOptions
from blipq.inference.settings import InferenceSettings
from blipq.inference.writers import OutputFormat


def caption_to_output(
    settings: InferenceSettings,
    options: CaptionOptions,
    sources: list[str],
    output_format: OutputFormat,
    out: Path | None,
    *,
    console: Console,
) -> int:
    """Caption `sources` into `out` (stdout when None) with a progress bar on `console`; the number that failed."""
    from functools import partial

    from blipq.contract.images import ImagePolicy
    from blipq.engine_build.checkpoint import resolve_checkpoint
    from blipq.inference.engine import CaptionEngine, quiet_transformers
    from blipq.inference.fetch import FetchPolicy
    from blipq.inference.offline import caption_sources
    from blipq.inference.settings import decode_threads
    from blipq.inference.sources import read_source
    from blipq.inference.writers import open_writer

    quiet_transformers()
    checkpoint = resolve_checkpoint(settings.model, settings.checkpoints_dir)
    with console.status(f"loading {checkpoint}"):
        engine = CaptionEngine.configured(checkpoint, settings)
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
                console=console,
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
            decode_threads=decode_threads(settings),
            fast_decode=settings.fast_decode,
        )
        for row in rows:
            writer.write(row)
            if row.error:
                failed += 1
                progress.console.print(f"[yellow]skipped[/] {row.source}: {row.error.message}", highlight=False)
            progress.advance(task)
    return failed
