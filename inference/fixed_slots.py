"""The text decoder's step on fixed shapes, so that on CUDA each shape's step is captured once as a CUDA graph
and replayed: a step of BLIP's decoder is some 200 small kernels, and launched one by one from Python the GPU
mostly waits for them.

What makes the shapes fixed:
- a cohort's slots come from a set allocated for a capacity of images (the count rounded up: 1, 2, 4, 8,
  then multiples of 8), its beams and its max_length; sets are kept and reused by later cohorts of the same
  shape, each with its graph;
- a step attends over all max_length positions of the self-attention slots, the positions not yet written
  masked out as transformers masks them (the dtype's minimum added to the score), and writes the new keys
  and values at the position held in a one-element tensor;
- rows beyond the cohort's images run along and are ignored; when images leave, the rows of those that stay
  move to the front of the same buffers, so the graph's addresses never change.

The prompt still runs as in `StaticTextDecoder` (once per cohort, not worth a graph). On the CPU the same
fixed-shape step runs eagerly: the parity tests run it there against transformers' `generate`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import BlipForConditionalGeneration

from blipq.inference.text_decoder import Cohort, StaticTextDecoder, rows_of

log = logging.getLogger(__name__)

ShapeKey = tuple[int, int, int, int]  # images, beams, max_length, patches

#: Idle slot sets (and their graphs) kept for later cohorts; beyond it the least recently used is dropped.
IDLE_SETS = 12


@dataclass
class SlotSet:
    """Static buffers for one cohort shape: what a step reads and writes, and the step's graph on CUDA."""

    shape: ShapeKey
    keys: list[torch.Tensor]  # per layer: images*beams x heads x max_length x size
    values: list[torch.Tensor]
    cross_keys: list[torch.Tensor]  # per layer: images x heads x patches x size
    cross_values: list[torch.Tensor]
    tokens: torch.Tensor  # images*beams x 1: the token each row feeds
    position: torch.Tensor  # (1,): where this step's keys and values go
    logits: torch.Tensor  # images*beams x vocabulary, float32: the step's output
    graph: torch.cuda.CUDAGraph | None = None

    @property
    def images(self) -> int:
        return self.shape[0]

    @property
    def beams(self) -> int:
        return self.shape[1]

    def front(self, cohort: Cohort, images: int) -> None:
        """Point the cohort's slots at the first `images` images' rows of this set."""
        rows = images * self.beams
        cohort.keys = [keys[:rows] for keys in self.keys]
        cohort.values = [values[:rows] for values in self.values]
        cohort.cross_keys = [keys[:images] for keys in self.cross_keys]
        cohort.cross_values = [values[:images] for values in self.cross_values]


@dataclass
class SlottedCohort(Cohort):
    """A cohort whose slots are views of the first rows of a `SlotSet`."""

    slots: SlotSet | None = field(default=None, repr=False)


class FixedSlotDecoder(StaticTextDecoder):
    """`StaticTextDecoder` whose steps run on fixed shapes (see the module's docstring); `graphs`: capture each
    shape's step as a CUDA graph (on a CUDA device only)."""

    def __init__(self, model: BlipForConditionalGeneration, graphs: bool) -> None:
        super().__init__(model)
        self._graphs = graphs
        self._vocabulary: int = model.text_decoder.config.vocab_size
        self._idle: OrderedDict[ShapeKey, list[SlotSet]] = OrderedDict()
        self._lock = threading.Lock()

    def _new_cohort(self, image_embeds: torch.Tensor, beams: int, max_length: int) -> Cohort:
        images, patches = image_embeds.shape[0], image_embeds.shape[1]
        slots = self._take((capacity_for(images), beams, max_length, patches), image_embeds)
        for index, (keys, values) in enumerate(self._cross_keys_values(image_embeds)):
            slots.cross_keys[index][:images] = keys
            slots.cross_values[index][:images] = values
        cohort = SlottedCohort(beams, slots=slots)
        slots.front(cohort, images)
        return cohort

    def step(self, cohorts: list[Cohort], tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each cohort's step on its slot set's fixed shapes (its graph replayed where there is one)."""
        logits = []
        for cohort, fed in zip(cohorts, tokens, strict=True):
            slots = _slots(cohort)
            slots.tokens[: cohort.rows, 0] = fed
            slots.position.fill_(cohort.length)
            if slots.graph is not None:
                slots.graph.replay()
            else:
                self._fixed_step(slots)
            cohort.length += 1
            logits.append(slots.logits[: cohort.rows].clone())
        return logits

    def keep(self, cohort: Cohort, images: torch.Tensor) -> None:
        """The kept images' rows and keys/values move to the front of the slot set's buffers."""
        slots, filled = _slots(cohort), cohort.length
        rows = rows_of(images, cohort.beams)
        count = rows.shape[0]
        for keys, values, whole_keys, whole_values in zip(
            cohort.keys, cohort.values, slots.keys, slots.values, strict=True
        ):
            whole_keys[:count, :, :filled] = keys[:, :, :filled].index_select(0, rows)
            whole_values[:count, :, :filled] = values[:, :, :filled].index_select(0, rows)
        for keys, values, whole_keys, whole_values in zip(
            cohort.cross_keys, cohort.cross_values, slots.cross_keys, slots.cross_values, strict=True
        ):
            whole_keys[: images.shape[0]] = keys.index_select(0, images)
            whole_values[: images.shape[0]] = values.index_select(0, images)
        slots.front(cohort, images.shape[0])

    def release(self, cohort: Cohort) -> None:
        slots = _slots(cohort)
        with self._lock:
            self._idle.setdefault(slots.shape, []).append(slots)
            self._idle.move_to_end(slots.shape)
            while sum(len(sets) for sets in self._idle.values()) > IDLE_SETS:
                oldest = next(iter(self._idle))
                self._idle[oldest].pop(0)
                if not self._idle[oldest]:
                    del self._idle[oldest]

    def _take(self, key: ShapeKey, like: torch.Tensor) -> SlotSet:
        """An idle slot set of this shape, or a new one (its step captured where graphs are on)."""
        with self._lock:
            sets = self._idle.get(key)
            if sets:
                slots = sets.pop()
                if not sets:
                    del self._idle[key]
                return slots
        slots = self._allocate(key, like)
        if self._graphs:
            try:
                slots.graph = self._capture(slots)
            except RuntimeError as exc:  # a driver or torch build that cannot capture: the same step, eagerly
                log.warning("capturing the decoder step as a CUDA graph failed (%s); it runs eagerly", exc)
                self._graphs = False
        return slots

    def _allocate(self, key: ShapeKey, like: torch.Tensor) -> SlotSet:
        # Zeros, not empty: rows and positions never written are still read (and masked or ignored), and must
        # not hold NaN, which a mask or a zero weight would not cancel.
        images, beams, max_length, patches = key
        rows, layers = images * beams, len(self._layers)
        self_shape = (rows, self._heads, max_length, self._head_size)
        cross_shape = (images, self._heads, patches, self._head_size)
        return SlotSet(
            key,
            keys=[like.new_zeros(self_shape) for _ in range(layers)],
            values=[like.new_zeros(self_shape) for _ in range(layers)],
            cross_keys=[like.new_zeros(cross_shape) for _ in range(layers)],
            cross_values=[like.new_zeros(cross_shape) for _ in range(layers)],
            tokens=torch.zeros((rows, 1), dtype=torch.long, device=like.device),
            position=torch.zeros(1, dtype=torch.long, device=like.device),
            logits=torch.zeros((rows, self._vocabulary), dtype=torch.float32, device=like.device),
        )

    def _capture(self, slots: SlotSet) -> torch.cuda.CUDAGraph:
        """The step on `slots` as a CUDA graph; warmed up first on a side stream, as CUDA graphs require."""
        side = torch.cuda.Stream(device=slots.tokens.device)  # type: ignore[no-untyped-call]  # torch leaves it untyped
        side.wait_stream(torch.cuda.current_stream(slots.tokens.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._fixed_step(slots)
        torch.cuda.current_stream(slots.tokens.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._fixed_step(slots)
        return graph

    def _fixed_step(self, slots: SlotSet) -> None:
        """One token per row of the whole set, at `slots.position`; the logits into `slots.logits`."""
        rows = slots.tokens.shape[0]
        hidden = self._embeddings(input_ids=slots.tokens, position_ids=slots.position.view(1, 1).expand(rows, 1))
        max_length = slots.keys[0].shape[2]
        later = torch.arange(max_length, device=hidden.device) > slots.position
        mask = torch.zeros(max_length, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(later, torch.finfo(hidden.dtype).min)
        for index, layer in enumerate(self._layers):
            hidden = self._fixed_layer(index, layer, hidden, slots, mask)
        slots.logits.copy_(self._head(hidden)[:, -1, :])

    def _fixed_layer(
        self, index: int, layer: Any, hidden: torch.Tensor, slots: SlotSet, mask: torch.Tensor
    ) -> torch.Tensor:
        attention = layer.attention.self
        keys, values = slots.keys[index], slots.values[index]
        keys.index_copy_(2, slots.position, self._split_heads(attention.key(hidden)))
        values.index_copy_(2, slots.position, self._split_heads(attention.value(hidden)))
        context = self._attend(self._split_heads(attention.query(hidden)), keys, values, mask)
        attended = layer.attention.output(self._merge_heads(context), hidden)
        cross = layer.crossattention.self
        images, beams = slots.images, slots.beams
        query = self._split_heads(cross.query(attended))  # rows x heads x 1 x size
        grouped = query.view(images, beams, self._heads, self._head_size).transpose(1, 2)
        context = self._attend(grouped, slots.cross_keys[index], slots.cross_values[index], None)
        context = context.transpose(1, 2).reshape(images * beams, self._heads, 1, self._head_size)
        crossed = layer.crossattention.output(self._merge_heads(context), attended)
        output: torch.Tensor = layer.output(layer.intermediate(crossed), crossed)
        return output


def capacity_for(images: int) -> int:
    """The slot set's image capacity for a cohort of `images`: few shapes (each is a graph), little waste."""
    if images <= 8:
        return 1 << (images - 1).bit_length()
    return -(-images // 8) * 8


def _slots(cohort: Cohort) -> SlotSet:
    if not isinstance(cohort, SlottedCohort) or cohort.slots is None:
        raise TypeError("a FixedSlotDecoder runs only the cohorts it started")
    return cohort.slots
