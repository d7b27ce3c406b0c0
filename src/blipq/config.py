"""Settings: one frozen object built once by the CLI from flags and `BLIPQ_*` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"

DType = Literal["auto", "fp32", "fp16", "bf16"]
ImageFormat = Literal["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]

#: Lists come from the environment as comma-separated text (`BLIPQ_IMAGE_FORMATS=JPEG,PNG`), not JSON.
CommaList = Annotated[tuple[str, ...], NoDecode]


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
    max_body_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Largest request body, counted as it arrives (not from Content-Length)."
    )
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest single image (decoded base64, upload or raw body)."
    )
    image_formats: Annotated[tuple[ImageFormat, ...], NoDecode] = Field(
        ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"),
        description="Image formats accepted, comma-separated; others are refused by their magic bytes.",
    )
    fetch_allow_networks: CommaList = Field(
        (),
        description="CIDR networks URL inputs may reach although not public (e.g. 10.0.0.0/8); "
        "by default only globally routable addresses are fetched.",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="Comma-separated API keys; when set (or api_keys_file), every job route needs one."
    )
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one per line, plain or as sha256:<hex>; # starts a comment."
    )
    max_queue_depth: int = Field(
        100_000, ge=0, description="New jobs get 429 while this many images are queued or running; 0 = no limit."
    )
    rate_limit: str | None = Field(
        None, description='Requests per API key (or client address) per API process, e.g. "600/minute".'
    )
    shutdown_timeout_s: int = Field(
        30, ge=0, description="On SIGTERM, how long the API waits for in-flight requests before closing them."
    )

    @field_validator("fetch_allow_networks", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return _split(value)

    @field_validator("image_formats", mode="before")
    @classmethod
    def _format_names(cls, value: object) -> object:
        parts = _split(value)
        return tuple(str(part).upper() for part in parts) if isinstance(parts, tuple | list) else parts

    @field_validator("fetch_allow_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(str(ipaddress.ip_network(part, strict=False)) for part in value)
        except ValueError as exc:
            raise ValueError(f"not a CIDR network: {exc}") from None

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if not value:
            return None
        from limits import parse  # a small import, only when a limit is configured

        try:
            parse(value)
        except ValueError:
            raise ValueError(f'{value!r} is not a rate like "600/minute" or "10/second"') from None
        return value


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value
