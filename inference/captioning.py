"""One model call's worth of images: wait for their decoding, caption the decoded ones together."""

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


def caption_prepared(
    engine: CaptionEngine, prepared: Sequence[Future[Tensor]], options: CaptionOptions, names: Sequence[str]
) -> list[str | BlipqError]:
    """Wait for each image's decoding, caption the decoded ones in one batch; one outcome per image, in order.

    An image that failed to decode gets its error; an unexpected exception (a decoder bug) costs that
    image only. `names` label images in the log.
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
        generated = engine.generate_each([tensor for _, tensor in ready], options)
        for (index, _), ids in zip(ready, generated, strict=True):
            outcomes[index] = ids if isinstance(ids, BlipqError) else engine.decode(ids, options)
    return [outcome for outcome in outcomes if outcome is not None]
