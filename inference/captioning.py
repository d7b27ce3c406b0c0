"""One model call's worth of images: caption the prepared ones together, one outcome per image, in order."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

from blipq.contract.errors import BlipqError, InvalidImage
from blipq.contract.options import CaptionOptions
from blipq.inference.engine import CaptionEngine

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


def caption_ready(
    engine: CaptionEngine, prepared: Sequence[Tensor], options: CaptionOptions, names: Sequence[str]
) -> list[str | BlipqError]:
    """Caption prepared images in one batch (split only where the model fails). `names` label them in the log."""
    generated = engine.generate_each(prepared, options)
    outcomes: list[str | BlipqError] = []
    for name, ids in zip(names, generated, strict=True):
        if isinstance(ids, BlipqError):
            log.warning("%s: %s", name, ids.message)
            outcomes.append(ids)
        else:
            outcomes.append(engine.decode(ids, options))
    return outcomes


def caption_prepared(
    engine: CaptionEngine, prepared: Sequence[Future[Tensor]], options: CaptionOptions, names: Sequence[str]
) -> list[str | BlipqError]:
    """Wait for each image's decoding, caption the decoded ones in one batch; one outcome per image, in order.

    An image that failed to decode gets its error; an unexpected exception (a decoder bug) costs that
    image only.
    """
    outcomes: list[str | BlipqError | None] = []  # None until the model has run
    ready: list[tuple[int, Tensor]] = []
    for index, (name, future) in enumerate(zip(names, prepared, strict=True)):
        try:
            ready.append((index, future.result()))
            outcomes.append(None)
        except BlipqError as exc:
            outcomes.append(exc)
        except Exception as exc:
            log.exception("unexpected error preparing %s", name)
            outcomes.append(InvalidImage(f"could not decode: {type(exc).__name__}: {exc}"))
    if ready:
        captioned = caption_ready(engine, [tensor for _, tensor in ready], options, [names[i] for i, _ in ready])
        for (index, _), outcome in zip(ready, captioned, strict=True):
            outcomes[index] = outcome
    return [outcome for outcome in outcomes if outcome is not None]
