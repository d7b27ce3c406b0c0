"""Settings: one frozen object built once by the CLI from flags and `BLIPQ_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"

DType = Literal["auto", "fp32", "fp16", "bf16"]


class Settings(BaseSettings):
    """Everything configurable. Environment variables are the field names with the `BLIPQ_` prefix."""

    model_config = SettingsConfigDict(env_prefix="BLIPQ_", frozen=True, extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="Local checkpoint directory or Hugging Face hub id.")
    checkpoints_dir: Path = Field(Path("checkpoints"), description="Where hub checkpoints are downloaded to.")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps.")
    dtype: DType = Field("auto", description="auto = fp16 on GPU, fp32 on CPU.")
    max_batch: int = Field(16, ge=1, le=1024, description="Images per model call.")
    max_image_pixels: int = Field(64_000_000, ge=1, description="Larger images are refused before decoding.")
    fetch_timeout_s: float = Field(20.0, gt=0, description="Total time allowed to fetch one URL.")
    max_fetch_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest URL response accepted.")
