"""Continuous batching: the searches the model is running, images joining at any step and leaving when done.

A group of images that share options starts as a cohort (`CaptionEngine.start_search`: the vision encoder
and the prompt); at every step all cohorts advance through the decoder together. An image is answered as
soon as its search is done, and the next images can join at the next step instead of waiting for the
whole batch to finish. Each cohort's captions are those of its images captioned alone
(tests/inference/test_search.py).

A model failure (CUDA out of memory, a bad input) costs the images in flight the fast path: they are
captioned again through `caption_ready`, which splits a failing batch until the failing image is alone (a
cohort that failed to start goes there in halves at once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from blipq.contract.errors import BlipqError
from blipq.contract.options import CaptionOptions
from blipq.inference.captioning import caption_ready
from blipq.inference.engine import CaptionEngine
from blipq.inference.search import CohortSearch

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

Tag = TypeVar("Tag")


@dataclass
class _Cohort(Generic[Tag]):
    search: CohortSearch
    options: CaptionOptions
    tags: list[Tag]  # per image, in the order the cohort started with
    prepared: list[Tensor]  # kept to caption again if the fast path fails
    names: list[str]


class RunningSearches(Generic[Tag]):
    """The cohorts in flight on one engine; used by one thread (the model's)."""

    def __init__(self, engine: CaptionEngine) -> None:
        self.engine = engine
        self._cohorts: list[_Cohort[Tag]] = []

    @property
    def images(self) -> int:
        """Images in flight."""
        return sum(len(cohort.search.images) for cohort in self._cohorts)

    def start(
        self, prepared: Sequence[Tensor], tags: Sequence[Tag], options: CaptionOptions, names: Sequence[str]
    ) -> list[tuple[Tag, str | BlipqError]]:
        """Start a cohort; outcomes of images that are already settled (invalid options, a model failure)."""
        try:
            search = self.engine.start_search(prepared, options)
        except BlipqError as exc:  # invalid options: the same for every image
            return [(tag, exc) for tag in tags]
        except Exception as exc:
            log.warning("the model failed to start %d images (%s); captioning them in halves", len(prepared), exc)
            return list(zip(tags, _in_halves(self.engine, prepared, options, names), strict=True))
        self._cohorts.append(_Cohort(search, options, list(tags), list(prepared), list(names)))
        return []

    def step(self) -> list[tuple[Tag, str | BlipqError]]:
        """Advance every cohort by its pending step; outcomes of the images that finished. Then run the next
        step of all the cohorts still going, together."""
        outcomes: list[tuple[Tag, str | BlipqError]] = []
        try:
            for cohort in self._cohorts:
                for image, ids in self.engine.advance_search(cohort.search).items():
                    outcomes.append((cohort.tags[image], self.engine.decode(ids, cohort.options)))
            self._cohorts = [cohort for cohort in self._cohorts if not cohort.search.done]
            self.engine.step_searches([cohort.search for cohort in self._cohorts])
        except Exception as exc:
            log.warning("the model failed while running %d images (%s); captioning them in batches", self.images, exc)
            outcomes += self._caption_again()
        return outcomes

    def _caption_again(self) -> list[tuple[Tag, str | BlipqError]]:
        """Every image still in flight, through `caption_ready` (one batch per cohort, split where it fails)."""
        outcomes: list[tuple[Tag, str | BlipqError]] = []
        cohorts, self._cohorts = self._cohorts, []
        for cohort in cohorts:
            left = cohort.search.images.tolist() if not cohort.search.done else []
            prepared = [cohort.prepared[image] for image in left]
            names = [cohort.names[image] for image in left]
            captioned = caption_ready(self.engine, prepared, cohort.options, names) if left else []
            outcomes += [(cohort.tags[image], outcome) for image, outcome in zip(left, captioned, strict=True)]
        return outcomes


def _in_halves(
    engine: CaptionEngine, prepared: Sequence[Tensor], options: CaptionOptions, names: Sequence[str]
) -> list[str | BlipqError]:
    """`caption_ready` on each half (the whole failed already), or on the one image."""
    if len(prepared) == 1:
        return caption_ready(engine, prepared, options, names)
    middle = len(prepared) // 2
    return caption_ready(engine, prepared[:middle], options, names[:middle]) + caption_ready(
        engine, prepared[middle:], options, names[middle:]
    )
