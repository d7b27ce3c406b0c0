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
    queue: str = Field("sqlite:///./data/blipq.db", description="Queue URL: sqlite:///path.db.")
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the HTTP API listens on.")
    workers: int = Field(1, ge=0, le=64, description="Worker processes `serve` supervises; 0 = API only.")
    batch_wait_ms: int = Field(10, ge=0, le=10_000, description="How long a worker waits to fill a batch.")
    lease_s: float = Field(60.0, gt=0, description="A claimed image returns to the queue if not renewed within this.")
    max_attempts: int = Field(3, ge=1, le=100, description="Claims of one image before it is failed.")
    blocking_timeout_s: float = Field(60.0, gt=0, description="Blocking routes answer 504 after this.")
    retention_s: float = Field(24 * 3600.0, gt=0, description="Finished jobs are purged after this.")
    max_images_per_job: int = Field(256, ge=1, description="Images one request may carry.")
    max_fetch_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest URL response accepted.")
