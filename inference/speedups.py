"""Speed-ups applied to one loaded BLIP model instance, without forking transformers.

Each one computes the same function as transformers' code; the parity tests compare the engine
(with these applied) against an untouched reference model token for token in fp32.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from transformers import BlipForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


def use_sdpa_in_vision_encoder(model: BlipForConditionalGeneration) -> None:
    """Run the vision encoder's attention through `scaled_dot_product_attention`.

    transformers' BLIP materialises the full 577x577 score matrix per head and soft-maxes it
    in separate kernels; SDPA fuses them (flash / memory-efficient kernels on GPU, a fused
    kernel on CPU). Only this instance is changed, not the class.
    """
    for layer in model.vision_model.encoder.layers:
        layer.self_attn.forward = types.MethodType(_sdpa_attention_forward, layer.self_attn)


def _sdpa_attention_forward(self: Any, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
    batch, length, width = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    context = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(batch, length, width)), None


class _BeamSharedCrossAttentionCache(DynamicCache):  # type: ignore[misc]
    """The cross-attention keys/values of an image, which all of its beams share.

    Beam search reorders caches by selecting beams within each image's own group of beams, and
    every beam of an image holds the same image keys/values, so reordering them changes no
    value. Skipping it saves copying 2 x layers x beams x 577 x hidden floats at every step.
    """

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        pass


def prefilled_cache(
    model: BlipForConditionalGeneration, image_embeds: torch.Tensor, num_beams: int
) -> EncoderDecoderCache:
    """A decoder cache whose cross-attention keys/values are already computed, once per image.

    Left to itself, generation projects the image embeddings after copying them for every beam,
    so each image's 577 x layers keys and values are computed `num_beams` times. Here they are
    computed once and the results copied, which is the same numbers for a third of the work.
    """
    config = model.text_decoder.config
    cross = _BeamSharedCrossAttentionCache(config=config)
    cache = EncoderDecoderCache(DynamicCache(config=config), cross)
    for index, layer in enumerate(model.text_decoder.bert.encoder.layer):
        attention = layer.crossattention.self
        shape = (*image_embeds.shape[:-1], -1, attention.attention_head_size)
        key = attention.key(image_embeds).view(shape).transpose(1, 2)
        value = attention.value(image_embeds).view(shape).transpose(1, 2)
        cross.update(key.repeat_interleave(num_beams, dim=0), value.repeat_interleave(num_beams, dim=0), index)
        cache.is_updated[index] = True
    return cache


def cache_keyword(model: BlipForConditionalGeneration) -> str:
    """The keyword that hands a cache to the text decoder's `generate`: transformers 5.x renamed
    `past_key_values` to `cache` (5.24 has `cache`, 5.17 still `past_key_values`), and `generate`
    refuses a keyword the model's `forward` does not name."""
    return "cache" if "cache" in inspect.signature(model.text_decoder.forward).parameters else "past_key_values"
