"""Settings both sides read: `BLIPQ_*` environment variables, overridden by command-line flags."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ImageFormat = Literal["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]

#: RabbitMQ's max_message_size as deploy/ sets it: a gateway's part or one image of up to 20 MiB fits.
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024

#: Lists come from the environment as comma-separated text (`BLIPQ_IMAGE_FORMATS=JPEG,PNG`), not JSON.
CommaList = Annotated[tuple[str, ...], NoDecode]


class SharedSettings(BaseSettings):
    """Where the two sides meet (the broker), and the image limits, which the gateway checks on arrival
    and the inference side again before decoding."""

    model_config = SettingsConfigDict(env_prefix="BLIPQ_", frozen=True, extra="forbid")

    broker_url: str | None = Field(
        None, description="RabbitMQ URL (amqp:// or amqps://); unset = embedded mode, everything in one process."
    )
    max_queued_messages: int = Field(
        10_000, ge=1, description="Request messages RabbitMQ holds before refusing publishes (x-max-length)."
    )
    max_images_per_job: int = Field(256, ge=1, description="Images one request (or request message) may carry.")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        description="Over RabbitMQ: the broker's max_message_size. No part of a job is larger; an image that alone "
        "would be gets 413 (RabbitMQ would refuse it by closing the channel, failing every publish in flight on it). "
        "A worker refuses a larger message, and holds at most max_held_bytes / this many messages at once.",
    )

    max_image_pixels: int = Field(64_000_000, ge=1, description="Larger images are refused before decoding.")
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest single image (decoded base64, upload or raw body)."
    )
    image_formats: Annotated[tuple[ImageFormat, ...], NoDecode] = Field(
        ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"),
        description="Image formats accepted, comma-separated; others are refused by their magic bytes.",
    )

    @field_validator("image_formats", mode="before")
    @classmethod
    def _format_names(cls, value: object) -> object:
        parts = split_commas(value)
        return tuple(str(part).upper() for part in parts) if isinstance(parts, tuple | list) else parts


def split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value
