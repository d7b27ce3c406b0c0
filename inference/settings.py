"""What the inference side is configured with: the model, where it runs, batching and URL fetching."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from blipq.contract.settings import CommaList, SharedSettings, split_commas

VisionEngine = Literal["auto", "torch", "tensorrt"]

DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"

DType = Literal["auto", "fp32", "fp16", "bf16"]

Decoder = Literal["blipq", "transformers"]

DEFAULT_MAX_HELD_BYTES = 1024 * 1024 * 1024


class InferenceSettings(SharedSettings):
    model: str = Field(DEFAULT_MODEL, description="Local checkpoint directory or Hugging Face hub id.")
    checkpoints_dir: Path = Field(Path("checkpoints"), description="Where hub checkpoints are downloaded to.")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps.")
    dtype: DType = Field("auto", description="auto = fp16 on GPU, fp32 on CPU.")
    vision_engine: VisionEngine = Field(
        "auto", description="auto (a TensorRT engine built for this GPU if there is one, else torch), torch, tensorrt."
    )
    decoder: Decoder = Field(
        "blipq",
        description="blipq: the engine's own greedy and beam search over fixed caches; transformers: its "
        "`generate` (slower; the same captions in fp32).",
    )
    max_batch: int = Field(16, ge=1, le=1024, description="Images per model call.")
    batch_wait_ms: int = Field(10, ge=0, le=10_000, description="How long to wait for more images to fill a batch.")
    decode_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads fetching and decoding images ahead of the model; 0 = one per CPU this process may "
        "use (at least 2).",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="Threads for torch's CPU work; 0 = 1 beside a GPU (the cores decode images), all cores when "
        "the model runs on the CPU.",
    )
    fast_decode: bool = Field(
        False,
        description="Decode JPEGs at least twice the model's input size at 1/2, 1/4 or 1/8 scale: far less CPU "
        "per image, but not the pixels of a full decode (captions may change).",
    )
    max_held_bytes: int = Field(
        DEFAULT_MAX_HELD_BYTES,
        ge=1024,
        description="`blipq worker`: the request bytes it may hold at once; its prefetch is at most this divided "
        "by max_message_bytes messages (and at most twice max_batch).",
    )
    decode_memory_bytes: int = Field(
        2 * 1024 * 1024 * 1024,
        ge=64 * 1024 * 1024,
        description="Memory the images being decoded may take at once (estimated from each one's header); a "
        "decode waits while it is spent, and an image larger than all of it decodes alone.",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="`blipq worker`: Prometheus metrics port; 0 = off.")
    fetch_timeout_s: float = Field(20.0, gt=0, description="Total time allowed to fetch one URL.")
    max_fetch_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest URL response accepted.")
    fetch_allow_networks: CommaList = Field(
        (),
        description="CIDR networks URL inputs may reach although not public (e.g. 10.0.0.0/8); "
        "by default only globally routable addresses are fetched.",
    )

    @field_validator("fetch_allow_networks", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_commas(value)

    @field_validator("fetch_allow_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(str(ipaddress.ip_network(part, strict=False)) for part in value)
        except ValueError as exc:
            raise ValueError(f"not a CIDR network: {exc}") from None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_threads(settings: InferenceSettings) -> int:
    return settings.decode_threads or max(2, usable_cpus())
