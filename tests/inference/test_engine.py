"""The engine must produce exactly what transformers' reference `generate` produces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from blipq.contract.errors import InvalidOptions
from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.helpers import drawing, encode, grey16, noise, varied_images

OPTION_SETS = [
    CaptionOptions(),  # the original project's defaults: beam 3, 20/5, "a picture of "
    CaptionOptions(num_beams=1),
    CaptionOptions(num_beams=3, prompt=""),
    CaptionOptions(num_beams=1, prompt="", min_length=10, max_length=15),
    CaptionOptions(num_beams=2, prompt="a photo of", max_length=12, min_length=12, repetition_penalty=1.3),
]


def decoded_inputs() -> list[Image.Image]:
    """Images that went through real encoders and our decoder, in several source modes."""
    palette = drawing(200, 150, "yellow", "purple").convert("P")
    sources = [
        encode(noise(640, 480, seed=1), "JPEG", quality=90),
        encode(drawing(1200, 900, "white", "green"), "PNG"),
        encode(palette, "GIF"),
        encode(noise(300, 300, seed=2, mode="RGBA"), "PNG"),
        encode(grey16(90, 60, seed=5), "PNG"),
        encode(drawing(37, 53, "navy", "orange"), "WEBP", lossless=True),
    ]
    return [decode_image(data) for data in sources]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    model = BlipForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    # The PIL backend, as the engine uses, whether or not torchvision is installed (with it, transformers
    # would pick its torchvision backend, which resizes differently).
    return model, BlipProcessor.from_pretrained(tiny_checkpoint, backend="pil")


def reference_ids(
    reference: tuple[BlipForConditionalGeneration, BlipProcessor], image: Image.Image, options: CaptionOptions
) -> list[int]:
    """What the transformers documentation does, one image at a time, fp32, on the model's device."""
    model, processor = reference
    if options.prompt:
        inputs = processor(images=image, text=options.prompt, return_tensors="pt")
    else:
        inputs = processor(images=image, return_tensors="pt")
    inputs = inputs.to(model.device)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            num_beams=options.num_beams,
            max_length=options.max_length,
            min_length=options.min_length,
            repetition_penalty=options.repetition_penalty,
        )
    ids: list[int] = output[0].tolist()
    return ids


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: f"beams{o.num_beams}-{o.prompt or 'noprompt'}")
def test_engine_matches_reference_generate_token_for_token(
    engine: CaptionEngine, reference: tuple[BlipForConditionalGeneration, BlipProcessor], options: CaptionOptions
) -> None:
    images = decoded_inputs()
    engine_ids = engine.generate([engine.prepare(image) for image in images], options)
    tokenizer = reference[1].tokenizer
    prompt_tokens = len(tokenizer(options.prompt)["input_ids"]) - 1 if options.prompt else 1
    for image, ids in zip(images, engine_ids, strict=True):
        expected = reference_ids(reference, image, options)
        assert ids == expected
        expected_text = tokenizer.decode(expected[prompt_tokens:], skip_special_tokens=True).strip()
        assert engine.decode(ids, options) == expected_text
        assert options.min_length <= len(ids) <= options.max_length


@pytest.mark.parametrize("beams", [1, 3])
def test_batch_of_n_equals_each_image_alone(engine: CaptionEngine, beams: int) -> None:
    options = CaptionOptions(num_beams=beams)
    images = varied_images() + decoded_inputs()[:2]
    batched = engine.caption(images, options)
    alone = [engine.caption([image], options)[0] for image in images]
    assert batched == alone
    assert len(batched) == 8


def test_captions_depend_on_the_image(engine: CaptionEngine) -> None:
    """Guards against BLIP's default 1e-10 vision init, under which every image captions alike."""
    captions = engine.caption(varied_images(), CaptionOptions())
    assert len(set(captions)) == len(captions), captions
    assert all(captions)


def test_prompt_is_removed_from_the_caption(engine: CaptionEngine) -> None:
    image = varied_images()[1]
    options = CaptionOptions(num_beams=1)
    ids = engine.generate([engine.prepare(image)], options)[0]
    full_text = engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert full_text.startswith("a picture of")
    assert not engine.caption([image], options)[0].startswith("a picture of")


def test_invalid_options_are_rejected_before_model_work(engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran with invalid options")

    monkeypatch.setattr(engine.model, "generate", must_not_run)
    image = varied_images()[0]
    with pytest.raises(InvalidOptions, match="no room for a caption"):
        engine.caption([image], CaptionOptions(max_length=4, min_length=0))
    with pytest.raises(InvalidOptions, match="exceeds this model's 512 positions"):
        engine.caption([image], CaptionOptions(max_length=512, min_length=0).model_copy(update={"max_length": 600}))


def test_empty_batch_does_nothing(engine: CaptionEngine) -> None:
    assert engine.caption([], CaptionOptions()) == []
