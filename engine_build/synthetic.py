"""`blipq test-model`: write a real BLIP checkpoint (config, weights, tokenizer, processor) with random weights.

Tests and benchmarks need checkpoints that load through the same `from_pretrained` path as
Salesforce's, without a download. `base` and `large` have the exact Salesforce shapes, so
they cost the same compute as the real weights.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
)

from blipq.engine_build.checkpoint import share_readably
from blipq.engine_build.vocab import build_vocab

Size = Literal["tiny", "base", "large"]


@dataclass(frozen=True)
class Shape:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    vocab_words: int  # WordPiece vocabulary; [DEC] and [ENC] are appended after it


SHAPES: dict[str, Shape] = {
    "tiny": Shape(32, 2, 4, 64, 32, 2, 4, 64, vocab_words=1000),
    # Salesforce/blip-image-captioning-base
    "base": Shape(768, 12, 12, 3072, 768, 12, 12, 3072, vocab_words=30522),
    # Salesforce/blip-image-captioning-large
    "large": Shape(1024, 24, 16, 4096, 768, 12, 12, 3072, vocab_words=30522),
}


def write_test_checkpoint(directory: Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a loadable random-weight BLIP captioning checkpoint of `size` into `directory`.

    The files are written into a staging folder first and moved in once their modes are fixed, so
    nothing else a user keeps in `directory` is touched.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".test-model-", dir=directory) as staging_name:
        staging = Path(staging_name)
        _write_checkpoint(staging, SHAPES[size], seed)
        share_readably(staging)
        for written in staging.iterdir():
            written.replace(directory / written.name)
    return directory


def _write_checkpoint(directory: Path, shape: Shape, seed: int) -> None:
    words = build_vocab(shape.vocab_words)
    tokenizer = _tokenizer(words)
    config = blip_config(shape, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    _randomise(model, seed)
    model.save_pretrained(directory)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tokenizer)
    processor.save_pretrained(directory)
    # Salesforce checkpoints ship preprocessor_config.json; keep the same layout.
    processor.image_processor.save_pretrained(directory)
    # The plain WordPiece file, for tools that read vocab.txt rather than tokenizer.json.
    (directory / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")


def blip_config(shape: Shape, *, vocab_size: int) -> BlipConfig:
    """A BLIP captioning config of `shape`; token ids follow BERT's layout with [DEC] after the vocabulary."""
    config = BlipConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": shape.text_hidden,
            "encoder_hidden_size": shape.vision_hidden,
            "intermediate_size": shape.text_intermediate,
            "num_hidden_layers": shape.text_layers,
            "num_attention_heads": shape.text_heads,
            "bos_token_id": vocab_size - 2,
            "pad_token_id": 0,
            "sep_token_id": 102,
        },
        vision_config={
            "hidden_size": shape.vision_hidden,
            "num_hidden_layers": shape.vision_layers,
            "num_attention_heads": shape.vision_heads,
            "intermediate_size": shape.vision_intermediate,
            "image_size": 384,
            "patch_size": 16,
            "initializer_range": 0.02,
        },
    )
    config.architectures = ["BlipForConditionalGeneration"]
    return config


def _tokenizer(words: list[str]) -> BertTokenizer:
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(words)}, do_lower_case=True)
    # What BLIP's own init_tokenizer adds: [DEC] starts the decoder, [ENC] the encoder.
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


@torch.no_grad()
def _randomise(model: BlipForConditionalGeneration, seed: int) -> None:
    """Variance-preserving random weights, so that captions depend on the image.

    With transformers' defaults (vision std 1e-10, 0.02 elsewhere) cross-attention is nearly
    uniform and tiny, every image produces the same caption, and batching bugs hide.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.02, generator=generator)
        elif isinstance(module, torch.nn.Embedding):
            module.weight.normal_(0.0, 1.0, generator=generator)
    embeddings = model.vision_model.embeddings
    embeddings.class_embedding.normal_(0.0, 0.02, generator=generator)
    embeddings.position_embedding.normal_(0.0, 0.02, generator=generator)
