"""`blipq build-engine`: compile BLIP's vision encoder to a TensorRT fp16 engine for this GPU, validate it
against the eager fp16 encoder, and write it with its manifest (an engine that fails validation is not
written). Follows torch-tensorrt 2.14's dynamo path: export with a dynamic batch, compile the exported
program with fp16 inputs and fp32 accumulation, require full compilation, save as an ExportedProgram."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blipq.contract.errors import ModelUnavailable
from blipq.contract.options import CaptionOptions
from blipq.engine_build.export import export_vision_encoder
from blipq.inference.engine import CaptionEngine
from blipq.inference.vision import (
    MANIFEST,
    PROGRAM,
    BatchRange,
    Environment,
    Manifest,
    Validation,
    mismatches,
    weights_sha256,
)

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
MIN_EXACT_CAPTIONS = 0.99
VALIDATION_IMAGES = 100


def missing_requirement() -> str | None:
    """What this machine lacks to build an engine, as one line saying what to do; None when nothing."""
    if not torch.cuda.is_available():
        return (
            "no CUDA device: an engine is built on, and for, the GPU model that will run it; "
            "run build-engine on that machine"
        )
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        return "torch-tensorrt is not installed: pip install 'blipq[tensorrt]' (torch-tensorrt 2.14 with torch 2.14)"
    return None


def build_engine(checkpoint: Path, *, max_batch: int, opt_batch: int, out: Path | None = None) -> Path:
    """The engine's folder; a fitting engine already there is kept as it is (building again is a no-op)."""
    import torch_tensorrt

    device = torch.device("cuda")
    environment = Environment.here(device)
    folder = out or checkpoint / "engines" / environment.engine_folder()
    weights = weights_sha256(checkpoint)
    if (folder / MANIFEST).is_file() and (folder / PROGRAM).is_file():
        existing = Manifest.model_validate_json((folder / MANIFEST).read_text(encoding="utf-8"))
        if not mismatches(existing, environment, torch.float16, weights) and existing.batch.max >= max_batch:
            log.info("a fitting engine is already in %s", folder)
            return folder
    engine = CaptionEngine.load(checkpoint, device="cuda", dtype="fp16", vision_engine="torch")
    size = engine.model.config.vision_config.image_size
    program = export_vision_encoder(engine.model, max_batch=max_batch, device=device, dtype=torch.float16)
    shape = (3, size, size)
    # The same min/opt/max Input at compile and at save, so the saved program keeps its dynamic batch.
    inputs = [
        torch_tensorrt.Input(
            min_shape=(1, *shape), opt_shape=(opt_batch, *shape), max_shape=(max_batch, *shape), dtype=torch.half
        )
    ]
    compiled = torch_tensorrt.dynamo.compile(
        program,
        arg_inputs=inputs,
        use_explicit_typing=True,  # the module is fp16 already: TensorRT keeps its dtypes
        use_fp32_acc=True,  # fp16 matmuls accumulate in fp32, for accuracy
        require_full_compilation=True,  # no silent fallback to torch for parts of the graph
        min_block_size=1,
    )
    validation = validate(engine, compiled)
    if validation.cosine < MIN_COSINE or validation.exact_caption_rate < MIN_EXACT_CAPTIONS:
        raise ModelUnavailable(
            f"the engine failed validation and was not written: cosine {validation.cosine:.5f} "
            f"(needs {MIN_COSINE}), exact captions {validation.exact_caption_rate:.1%} (needs {MIN_EXACT_CAPTIONS:.0%})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    torch_tensorrt.save(compiled, str(folder / PROGRAM), output_format="exported_program", arg_inputs=inputs)
    manifest = Manifest(
        checkpoint=str(checkpoint),
        weights_sha256=weights,
        image_size=size,
        dtype="float16",
        batch=BatchRange(min=1, opt=opt_batch, max=max_batch),
        torch=environment.torch,
        torch_tensorrt=environment.torch_tensorrt or "",
        tensorrt=environment.tensorrt or "",
        cuda=environment.cuda or "",
        gpu_name=environment.gpu_name or "",
        gpu_sm=environment.gpu_sm or "",
        validation=validation,
    )
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return folder


def validate(engine: CaptionEngine, compiled: torch.nn.Module) -> Validation:
    """Encoder outputs and captions of the compiled encoder against the eager fp16 one, on varied images."""
    images = [_validation_image(seed) for seed in range(VALIDATION_IMAGES)]
    prepared = [engine.prepare(image) for image in images]
    cosines, max_diff = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(prepared), 16):
            pixels = engine.pixel_values(prepared[start : start + 16]).half()
            eager = engine.model.vision_model(pixel_values=pixels)[0].float()
            built = compiled(pixels).float()
            cosines += torch.nn.functional.cosine_similarity(eager.flatten(1), built.flatten(1)).tolist()
            max_diff = max(max_diff, (eager - built).abs().max().item())
    options = CaptionOptions()
    expected = engine.caption(images, options)
    engine.use_vision_encoder(compiled, "tensorrt")
    captions = engine.caption(images, options)
    exact = sum(a == b for a, b in zip(captions, expected, strict=True)) / len(images)
    cosine = min(cosines) if cosines else math.nan
    return Validation(cosine=cosine, max_abs_diff=max_diff, exact_caption_rate=exact, images=len(images))


def _validation_image(seed: int) -> Image.Image:
    """Smooth random colour fields of varied sizes: image-like, not noise the encoder never sees."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(200, 900)), int(rng.integers(200, 900))
    coarse = rng.integers(0, 256, (int(rng.integers(2, 12)), int(rng.integers(2, 12)), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
