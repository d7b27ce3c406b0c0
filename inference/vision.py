"""Which vision encoder runs: torch (any device), or a TensorRT fp16 engine built ahead of time by
`blipq build-engine` for this GPU, these library versions and these weights.

An engine lives in `<checkpoint>/engines/<sm>-trt<version>/` beside a `manifest.json` that says what it
was built for. `auto` uses one only when everything matches, else torch with one log line saying why;
`tensorrt` without a usable engine stops with that reason. An engine is never loaded on another GPU model.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from pydantic import BaseModel

from blipq.contract.errors import ModelUnavailable
from blipq.inference.settings import VisionEngine

log = logging.getLogger(__name__)


#: A name that the fields called `torch` below cannot shadow.
TorchDevice = torch.device
MANIFEST = "manifest.json"
PROGRAM = "vision.ep"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class BatchRange(BaseModel):
    min: int
    opt: int
    max: int


class Validation(BaseModel):
    """How the engine compared with the eager fp16 encoder on the same inputs when it was built."""

    cosine: float
    max_abs_diff: float
    exact_caption_rate: float
    images: int


class Manifest(BaseModel):
    checkpoint: str
    weights_sha256: str
    image_size: int
    dtype: str
    batch: BatchRange
    torch: str
    torch_tensorrt: str
    tensorrt: str
    cuda: str
    gpu_name: str
    gpu_sm: str
    validation: Validation


@dataclass(frozen=True)
class Environment:
    """What this process would run an engine on."""

    torch: str
    torch_tensorrt: str | None
    tensorrt: str | None
    cuda: str | None
    gpu_name: str | None
    gpu_sm: str | None

    @classmethod
    def here(cls, device: TorchDevice) -> Environment:
        on_gpu = device.type == "cuda" and torch.cuda.is_available()
        major, minor = torch.cuda.get_device_capability(device) if on_gpu else (0, 0)
        return cls(
            torch=torch.__version__,
            torch_tensorrt=_version("torch-tensorrt"),
            tensorrt=_version("tensorrt") or _version("tensorrt-cu12"),
            cuda=torch.version.cuda,
            gpu_name=torch.cuda.get_device_name(device) if on_gpu else None,
            gpu_sm=f"sm{major}{minor}" if on_gpu else None,
        )

    def engine_folder(self) -> str:
        return f"{self.gpu_sm}-trt{self.tensorrt}"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def weights_sha256(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = checkpoint / name
        if path.is_file():
            with path.open("rb") as weights:
                while chunk := weights.read(1 << 24):
                    digest.update(chunk)
            return digest.hexdigest()
    raise ModelUnavailable(f"no weights file ({' or '.join(WEIGHT_FILES)}) in {checkpoint}")


def mismatches(manifest: Manifest, environment: Environment, dtype: torch.dtype, weights: str) -> list[str]:
    """Everything that makes the engine unusable here, each in a few words; empty when it fits."""
    found = []
    if (manifest.gpu_name, manifest.gpu_sm) != (environment.gpu_name, environment.gpu_sm):
        found.append(f"built for {manifest.gpu_name} ({manifest.gpu_sm}), this is {environment.gpu_name}")
    for name in ("torch", "torch_tensorrt", "tensorrt", "cuda"):
        built, here = getattr(manifest, name), getattr(environment, name)
        if built != here:
            found.append(f"built with {name} {built}, here {here}")
    if manifest.dtype != str(dtype).removeprefix("torch."):
        found.append(f"built for {manifest.dtype}, this process runs {str(dtype).removeprefix('torch.')}")
    if manifest.weights_sha256 != weights:
        found.append("built from other weights (the weights hash differs)")
    return found


def unusable_reason(checkpoint: Path, environment: Environment, dtype: torch.dtype) -> str | None:
    """Why no TensorRT engine can run here (None when one can)."""
    if environment.gpu_sm is None:
        return "no CUDA device"
    if environment.torch_tensorrt is None or environment.tensorrt is None:
        return "torch-tensorrt is not installed (pip install 'blipq[tensorrt]')"
    folder = checkpoint / "engines" / environment.engine_folder()
    if not (folder / MANIFEST).is_file() or not (folder / PROGRAM).is_file():
        return f"no engine in {folder}; build one with `blipq build-engine --model {checkpoint}`"
    manifest = Manifest.model_validate_json((folder / MANIFEST).read_text(encoding="utf-8"))
    problems = mismatches(manifest, environment, dtype, weights_sha256(checkpoint))
    return f"the engine in {folder} does not fit: {'; '.join(problems)}" if problems else None


def choose_vision_encoder(
    choice: VisionEngine, checkpoint: Path, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module | None:
    """The TensorRT encoder to run, or None for torch. Raises ModelUnavailable when `tensorrt` was asked
    for and cannot be had."""
    if choice == "torch":
        return None
    environment = Environment.here(device)
    reason = unusable_reason(checkpoint, environment, dtype)
    if reason is None:
        import torch_tensorrt  # noqa: F401 - registers the TensorRT runtime ops the program calls

        folder = checkpoint / "engines" / environment.engine_folder()
        module: torch.nn.Module = torch.export.load(folder / PROGRAM).module()
        log.info("vision encoder: TensorRT engine from %s", folder)
        return module
    if choice == "tensorrt":
        raise ModelUnavailable(f"--vision-engine tensorrt: {reason}")
    log.info("vision encoder: torch (%s)", reason)
    return None
