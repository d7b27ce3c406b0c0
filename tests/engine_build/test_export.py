"""The exported vision encoder (the TensorRT build's input and file format) equals the eager encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blipq.contract.options import CaptionOptions
from blipq.engine_build.export import export_vision_encoder, load_program, save_program
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.helpers import pictures


@pytest.fixture(scope="module")
def exported(engine: CaptionEngine, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    path = tmp_path_factory.mktemp("export") / "vision.ep"
    save_program(export_vision_encoder(engine.model, max_batch=8, device=engine.device, dtype=engine.dtype), path)
    return load_program(path)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_saved_and_loaded_with_a_dynamic_batch_it_gives_the_eager_output(
    exported: torch.nn.Module, engine: CaptionEngine, batch: int
) -> None:
    size = engine.model.config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        expected = engine.model.vision_model(pixel_values=pixels)[0]
        assert torch.equal(exported(pixels), expected)


def test_captions_through_the_exported_encoder_equal_the_reference(
    exported: torch.nn.Module, tiny_checkpoint: Path, engine: CaptionEngine
) -> None:
    """The path a TensorRT engine takes: the engine swaps its vision encoder, the HF decoder stays."""
    images = [decode_image(image) for image in pictures(3)]
    swapped = CaptionEngine.load(tiny_checkpoint, device="cpu", dtype="fp32", vision_engine="torch")
    swapped.use_vision_encoder(exported, "exported")
    assert swapped.caption(images, CaptionOptions()) == engine.caption(images, CaptionOptions())
    assert swapped.vision_backend == "exported"
