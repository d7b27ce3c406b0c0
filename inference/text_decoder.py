"""BLIP's text decoder run step by step over fixed caches, with the modules (and weights) of the loaded model.

transformers' decoder keeps its self-attention keys and values in a cache that grows by a concatenation at
every step, copies each image's cross-attention keys and values once per beam, and rebuilds masks and output
records on every call. Here:
- self-attention keys and values go into slots allocated once per cohort (rows x heads x max_length x head
  size);
- cross-attention keys and values are projected once per image and every beam of that image reads them, so
  neither a copy per beam nor a reorder when beams are reselected is needed;
- each layer is the same sequence of operations as transformers' BLIP text layer (same modules, same order,
  the score scaled by a division as there), which is what keeps captions equal to the reference in fp32.

A cohort is a group of images that started together with the same options: its rows (images x beams,
beams of an image adjacent) share a length. One `step` advances any number of cohorts at once: the
projections and feed-forward layers run over all their rows together, the attention of each cohort over
its own slots. Images leave a cohort as soon as their search is done (`keep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import BlipForConditionalGeneration


@dataclass
class Cohort:
    """The decoder state of images that started together: their rows' slots and their images' keys/values."""

    beams: int
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer: rows x heads x max_length x size
    values: list[torch.Tensor] = field(default_factory=list)
    cross_keys: list[torch.Tensor] = field(default_factory=list)  # per layer: images x heads x patches x size
    cross_values: list[torch.Tensor] = field(default_factory=list)
    length: int = 0  # positions filled in the slots

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]


class StaticTextDecoder:
    """Runs cohorts: `start` one with its prompt, `step` cohorts one token per row, `reorder` the rows of a
    cohort as the search reselects beams, `keep` some of its images."""

    def __init__(self, model: BlipForConditionalGeneration) -> None:
        decoder = model.text_decoder
        self._embeddings = decoder.bert.embeddings
        self._layers = list(decoder.bert.encoder.layer)
        self._head = decoder.cls
        config = decoder.config
        self._heads: int = config.num_attention_heads
        self._head_size: int = config.hidden_size // config.num_attention_heads
        self._scale = math.sqrt(self._head_size)

    def start(
        self, image_embeds: torch.Tensor, prompt: torch.Tensor, beams: int, max_length: int
    ) -> tuple[Cohort, torch.Tensor]:
        """A cohort for `image_embeds` (images x patches x width) with `beams` rows each, its prompt run
        (1 x prompt length token ids, the same for every image), and each row's next-token logits (rows x
        vocabulary, float32). The prompt runs once per image and its keys, values and logits are copied to
        every beam: before the first step all beams of an image are the same sequence."""
        images, prompt_length = image_embeds.shape[0], prompt.shape[1]
        cohort = self._new_cohort(image_embeds, beams, max_length)
        # The prompt runs in the first beam's rows (views into the cohort's slots).
        first_beams = [keys[::beams] for keys in cohort.keys], [values[::beams] for values in cohort.values]
        prompt_view = Cohort(1, *first_beams, cohort.cross_keys, cohort.cross_values)
        [logits] = self._forward([prompt_view], prompt.expand(images, prompt_length), causal=True)
        for keys, values in zip(cohort.keys, cohort.values, strict=True):
            keys[:, :, :prompt_length] = keys[::beams, :, :prompt_length].repeat_interleave(beams, dim=0)
            values[:, :, :prompt_length] = values[::beams, :, :prompt_length].repeat_interleave(beams, dim=0)
        cohort.length = prompt_length
        return cohort, logits.repeat_interleave(beams, dim=0) if beams > 1 else logits

    def _new_cohort(self, image_embeds: torch.Tensor, beams: int, max_length: int) -> Cohort:
        """A cohort with the images' cross-attention keys and values and empty self-attention slots."""
        cohort = Cohort(beams)
        for keys, values in self._cross_keys_values(image_embeds):
            # Contiguous once, so that no step copies them to batch the product over images and heads.
            cohort.cross_keys.append(keys.contiguous())
            cohort.cross_values.append(values.contiguous())
        slots = (image_embeds.shape[0] * beams, self._heads, max_length, self._head_size)
        cohort.keys = [image_embeds.new_empty(slots) for _ in self._layers]
        cohort.values = [image_embeds.new_empty(slots) for _ in self._layers]
        return cohort

    def _cross_keys_values(self, image_embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the images' cross-attention keys and values (images x heads x patches x size)."""
        projected = []
        for layer in self._layers:
            attention = layer.crossattention.self
            projected.append(
                (self._split_heads(attention.key(image_embeds)), self._split_heads(attention.value(image_embeds)))
            )
        return projected

    def release(self, cohort: Cohort) -> None:
        """The cohort's search is done: its slots may serve another cohort (here they are simply dropped)."""

    def step(self, cohorts: list[Cohort], tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feed each cohort one token per row (rows,) at its next position; next-token logits per cohort."""
        return self._forward(cohorts, torch.cat(tokens)[:, None], causal=False)

    def reorder(self, cohort: Cohort, rows: torch.Tensor) -> None:
        """Row i continues the sequence row `rows[i]` held (beam search kept it, or a copy of it)."""
        filled = cohort.length
        for keys, values in zip(cohort.keys, cohort.values, strict=True):
            keys[:, :, :filled] = keys[:, :, :filled].index_select(0, rows)
            values[:, :, :filled] = values[:, :, :filled].index_select(0, rows)

    def keep(self, cohort: Cohort, images: torch.Tensor) -> None:
        """Keep only the images at indices `images` (ascending), with their rows, in the cohort."""
        rows = rows_of(images, cohort.beams)
        cohort.keys = [keys.index_select(0, rows) for keys in cohort.keys]
        cohort.values = [values.index_select(0, rows) for values in cohort.values]
        cohort.cross_keys = [keys.index_select(0, images) for keys in cohort.cross_keys]
        cohort.cross_values = [values.index_select(0, images) for values in cohort.cross_values]

    def _forward(self, cohorts: list[Cohort], tokens: torch.Tensor, causal: bool) -> list[torch.Tensor]:
        count = tokens.shape[1]
        sizes = [cohort.rows for cohort in cohorts]
        positions = torch.cat(
            [torch.arange(cohort.length, cohort.length + count, device=tokens.device).expand(size, count)
             for cohort, size in zip(cohorts, sizes, strict=True)]
        )  # fmt: skip
        hidden = self._embeddings(input_ids=tokens, position_ids=positions)
        mask = self._causal_mask(count, hidden.dtype, hidden.device) if causal else None
        for index, layer in enumerate(self._layers):
            hidden = self._layer(index, layer, hidden, cohorts, sizes, mask)
        for cohort in cohorts:
            cohort.length += count
        logits: torch.Tensor = self._head(hidden[:, -1:, :])[:, -1, :].to(dtype=torch.float32, copy=True)
        return list(torch.split(logits, sizes))

    def _layer(
        self,
        index: int,
        layer: Any,
        hidden: torch.Tensor,
        cohorts: list[Cohort],
        sizes: list[int],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        count = hidden.shape[1]
        # Self-attention of each cohort over its slots filled so far, this call's tokens written first.
        attention = layer.attention.self
        queries = torch.split(self._split_heads(attention.query(hidden)), sizes)
        new_keys = torch.split(self._split_heads(attention.key(hidden)), sizes)
        new_values = torch.split(self._split_heads(attention.value(hidden)), sizes)
        contexts = []
        for cohort, query, key, value in zip(cohorts, queries, new_keys, new_values, strict=True):
            start, end = cohort.length, cohort.length + count
            keys, values = cohort.keys[index], cohort.values[index]
            keys[:, :, start:end] = key
            values[:, :, start:end] = value
            contexts.append(self._attend(query, keys[:, :, :end], values[:, :, :end], mask))
        attended = layer.attention.output(self._merge_heads(torch.cat(contexts)), hidden)
        # Cross-attention: each image's keys and values, read by all of its rows at once.
        cross = layer.crossattention.self
        queries = torch.split(self._split_heads(cross.query(attended)), sizes)  # rows x heads x count x size
        contexts = []
        for cohort, query in zip(cohorts, queries, strict=True):
            images, per_image = cohort.cross_keys[index].shape[0], cohort.beams
            grouped = query.view(images, per_image, self._heads, count, self._head_size).transpose(1, 2)
            grouped = grouped.reshape(images, self._heads, per_image * count, self._head_size)
            context = self._attend(grouped, cohort.cross_keys[index], cohort.cross_values[index], None)
            context = context.view(images, self._heads, per_image, count, self._head_size).transpose(1, 2)
            contexts.append(context.reshape(images * per_image, self._heads, count, self._head_size))
        crossed = layer.crossattention.output(self._merge_heads(torch.cat(contexts)), attended)
        output: torch.Tensor = layer.output(layer.intermediate(crossed), crossed)
        return output

    def _attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        scores = torch.matmul(query, keys.transpose(-1, -2)) / self._scale
        if mask is not None:
            scores = scores + mask
        return torch.matmul(torch.softmax(scores, dim=-1), values)

    @staticmethod
    def _causal_mask(count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """As transformers adds it: 0 where a position may attend, the dtype's minimum where it may not."""
        future = torch.ones(count, count, dtype=torch.bool, device=device).triu(1)
        return torch.zeros(count, count, dtype=dtype, device=device).masked_fill(future, torch.finfo(dtype).min)

    def _split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        """rows x positions x width -> rows x heads x positions x head size."""
        rows, positions, _ = projected.shape
        return projected.view(rows, positions, self._heads, self._head_size).transpose(1, 2)

    def _merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        rows, _, positions, _ = context.shape
        return context.permute(0, 2, 1, 3).contiguous().view(rows, positions, self._heads * self._head_size)


def rows_of(images: torch.Tensor, beams: int) -> torch.Tensor:
    """The cohort rows of the images at indices `images` (an image's beams are adjacent rows), in order."""
    return (images[:, None] * beams + torch.arange(beams, device=images.device)).view(-1)
