"""TensorRT engines built for real, on a GPU with torch-tensorrt; skipped everywhere else (never in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blipq.engine_build.synthetic import write_test_checkpoint
from blipq.engine_build.tensorrt_build import MIN_COSINE, MIN_EXACT_CAPTIONS, build_engine, missing_requirement
from blipq.inference.engine import CaptionEngine
from blipq.inference.vision import MANIFEST, Manifest

pytestmark = pytest.mark.skipif(missing_requirement() is not None, reason=str(missing_requirement()))


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_an_engine_validates_and_is_used_by_auto(size: str, tmp_path: Path) -> None:
    checkpoint = write_test_checkpoint(tmp_path / size, size=size)  # type: ignore[arg-type]
    folder = build_engine(checkpoint, max_batch=16, opt_batch=8)
    manifest = Manifest.model_validate_json((folder / MANIFEST).read_text())
    assert manifest.validation.images >= 100
    assert manifest.validation.cosine >= MIN_COSINE
    assert manifest.validation.exact_caption_rate >= MIN_EXACT_CAPTIONS
    engine = CaptionEngine.load(checkpoint, device="cuda", dtype="fp16", vision_engine="auto")
    assert engine.vision_backend == "tensorrt"
    assert build_engine(checkpoint, max_batch=16, opt_batch=8) == folder  # a fitting engine: nothing rebuilt
