"""`blipq caption`: caption a stream of sources in batches, decoding the next batch while the model runs.

Decoding and pre-processing happen on a thread pool a bounded window ahead of the model, so
CPU work overlaps generation without holding every image in memory. A source that cannot be
read or decoded becomes an error row; a batch the model fails on is split until only the
failing image gets an error row (`CaptionEngine.generate_each`); the run always goes on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from blipq.contract.errors import BlipqError
from blipq.contract.images import ImagePolicy
from blipq.contract.options import CaptionOptions
from blipq.inference.captioning import caption_prepared
from blipq.inference.engine import CaptionEngine
from blipq.inference.writers import CaptionRow

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


def caption_sources(
    engine: CaptionEngine,
    sources: Sequence[str],
    options: CaptionOptions,
    *,
    read: Callable[[str], bytes],
    policy: ImagePolicy,
    batch_size: int,
    decode_threads: int = 2,
    fast_decode: bool = False,
) -> Iterator[CaptionRow]:
    """Yield one row per source, in input order. `fast_decode`: large JPEGs decoded at a reduced scale."""
    engine.check_options(options)

    def prepare(source: str) -> Tensor:
        return engine.prepare_file(read(source), policy, fast_decode=fast_decode)

    window = 2 * batch_size  # one batch on the model, one being decoded
    with ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="blipq-decode") as pool:
        pending: deque[tuple[str, Future[Tensor]]] = deque()
        upcoming = iter(sources)
        while True:
            for source in upcoming:
                pending.append((source, pool.submit(prepare, source)))
                if len(pending) >= window:
                    break
            if not pending:
                return
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            yield from _run_batch(engine, batch, options)


def _run_batch(
    engine: CaptionEngine, batch: list[tuple[str, Future[Tensor]]], options: CaptionOptions
) -> Iterator[CaptionRow]:
    outcomes = caption_prepared(engine, [future for _, future in batch], options, [source for source, _ in batch])
    for (source, _), outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, BlipqError):
            yield CaptionRow(source, error=outcome)
        else:
            yield CaptionRow(source, caption=outcome)
