"""What the benchmarks caption: JPEG files of photo sizes, random-weight checkpoints of the real shapes, and
options that force every caption to the same number of tokens (random weights would stop anywhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CACHE = Path(".bench")
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (2000, 1500)]
PROMPT = "a picture of "


def make_inputs(count: int) -> list[Path]:
    """`count` JPEGs from 640x480 to 2000x1500, written once into .bench/images."""
    from PIL import Image, ImageFilter

    folder = CACHE / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo{index:03d}.jpg"
        if not path.exists():
            width, height = SIZES[index % len(SIZES)]
            rng = np.random.default_rng(index)
            # Smooth noise compresses like a photo (a few hundred KB), unlike white noise.
            small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((width, height), Image.BICUBIC).filter(ImageFilter.DETAIL)
            image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def checkpoint(size: str) -> Path:
    from blipq.engine_build.synthetic import write_test_checkpoint

    path = CACHE / f"blip-{size}"
    if not (path / "model.safetensors").exists():
        write_test_checkpoint(path, size=size)  # type: ignore[arg-type]
    return path


def forced_length(model_dir: Path, tokens: int) -> int:
    """max_length = min_length that makes every caption `tokens` new tokens after PROMPT."""
    from transformers import BlipProcessor

    tokenizer = BlipProcessor.from_pretrained(model_dir, backend="pil").tokenizer
    return len(tokenizer(PROMPT)["input_ids"]) - 1 + tokens
