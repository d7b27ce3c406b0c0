"""Pick the torch device and dtype from user settings ("auto" included)."""

from __future__ import annotations

import torch

from blipq.contract.errors import ModelUnavailable

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ModelUnavailable(f"unknown device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelUnavailable(f"device {spec!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelUnavailable(f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelUnavailable(f"device {spec!r} requested but MPS is not available on this machine")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on GPUs and fp32 on CPU, where half precision is slow or unsupported."""
    if spec == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    try:
        return _DTYPES[spec]
    except KeyError:
        raise ModelUnavailable(f"unknown dtype {spec!r}; choose one of auto, {', '.join(_DTYPES)}") from None


def use_torch_threads(requested: int, device: torch.device) -> int:
    """Set torch's CPU thread count: `requested`, or for 0, one beside a GPU and torch's own default (one per
    core) on the CPU. Beside a GPU, torch's CPU work is a few copies per batch, and idle OpenMP threads spinning
    for more would take the cores that decode images. Returns the count."""
    threads = requested or (torch.get_num_threads() if device.type == "cpu" else 1)
    torch.set_num_threads(threads)
    return threads


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
