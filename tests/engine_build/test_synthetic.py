from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

from blipq.contract.options import CaptionOptions
from blipq.engine_build.synthetic import SHAPES, blip_config, write_test_checkpoint
from blipq.engine_build.vocab import build_vocab
from blipq.inference.engine import CaptionEngine
from tests.helpers import varied_images


def test_tiny_checkpoint_round_trips_through_from_pretrained(tiny_checkpoint: Path) -> None:
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "vocab.txt"):
        assert (tiny_checkpoint / name).is_file(), name
    model = BlipForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = BlipProcessor.from_pretrained(tiny_checkpoint)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[SEP]", "[DEC]"]) == [
        model.config.text_config.pad_token_id,
        model.config.text_config.sep_token_id,
        model.config.text_config.bos_token_id,
    ]
    assert tokenizer.tokenize("A picture of a dog") == ["a", "picture", "of", "a", "dog"]
    inputs = processor(images=varied_images()[0], text="a picture of ", return_tensors="pt")
    output = model.generate(**inputs, max_length=12, min_length=12)
    assert output.shape == (1, 12)
    assert processor.decode(output[0], skip_special_tokens=True).startswith("a picture of")


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    first = write_test_checkpoint(tmp_path / "a", seed=7)
    again = write_test_checkpoint(tmp_path / "b", seed=7)
    other = write_test_checkpoint(tmp_path / "c", seed=8)
    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_tiny_loads_and_captions_quickly(tiny_checkpoint: Path) -> None:
    engine = CaptionEngine.load(tiny_checkpoint, device="cpu")
    assert engine.caption(varied_images()[:1], CaptionOptions())[0]


# Shapes of the published Salesforce checkpoints' tensors (from their config.json).
SALESFORCE_SHAPES = {
    "base": {
        "vision_model.embeddings.patch_embedding.weight": (768, 3, 16, 16),
        "vision_model.embeddings.position_embedding": (1, 577, 768),
        "vision_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "text_decoder.bert.encoder.layer.11.crossattention.self.key.weight": (768, 768),
        "text_decoder.bert.embeddings.word_embeddings.weight": (30524, 768),
    },
    "large": {
        "vision_model.embeddings.patch_embedding.weight": (1024, 3, 16, 16),
        "vision_model.embeddings.position_embedding": (1, 577, 1024),
        "vision_model.encoder.layers.23.mlp.fc1.weight": (4096, 1024),
        "text_decoder.bert.encoder.layer.11.crossattention.self.key.weight": (768, 1024),
        "text_decoder.bert.embeddings.word_embeddings.weight": (30524, 768),
    },
}


@pytest.mark.parametrize("size", ["base", "large"])
def test_base_and_large_have_salesforce_shapes(size: str, tmp_path: Path) -> None:
    """Checked on the meta device: the exact tensor shapes without allocating the weights."""
    config: BlipConfig = blip_config(SHAPES[size], vocab_size=len(build_vocab(SHAPES[size].vocab_words)) + 2)
    with torch.device("meta"):
        model = BlipForConditionalGeneration(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    for name, shape in SALESFORCE_SHAPES[size].items():
        assert shapes[name] == shape, name
    assert len([n for n in shapes if n.startswith("vision_model.encoder.layers.") and n.endswith("fc1.weight")]) == (
        12 if size == "base" else 24
    )
    assert json.loads(config.to_json_string())["text_config"]["bos_token_id"] == 30522
