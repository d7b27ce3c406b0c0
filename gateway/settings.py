"""What the gateway is configured with: where it listens, its store and broker, limits and API keys."""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from blipq.contract.amqp import MAX_CUT_OFF_RUNS
from blipq.contract.settings import SharedSettings, split_commas


class GatewaySettings(SharedSettings):
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the HTTP API listens on.")
    store: str = Field(
        "sqlite:///./data/blipq.db",
        description="The result store: jobs, per-image outcomes, idempotency keys and unfinished requests. "
        "sqlite:///path/to/file.db (this gateway's own) or postgresql://user:password@host:5432/db (shared by "
        "every gateway on it; needs --broker).",
    )
    gateway_id: str = Field(
        default_factory=socket.gethostname,
        description="Names this gateway's durable reply queue (blipq.replies.<id>); keep it across restarts. "
        "Gateways on a PostgreSQL store share the store's queue instead (blipq.replies.store-<store id>).",
    )
    max_attempts: int = Field(
        MAX_CUT_OFF_RUNS,
        ge=1,
        le=100,
        description="Embedded mode: a job started this many times without finishing is failed (worker_lost); "
        "over RabbitMQ the queue's delivery limit does the same.",
    )
    blocking_timeout_s: float = Field(60.0, gt=0, description="Blocking routes answer 504 after this.")
    retention_s: float = Field(24 * 3600.0, gt=0, description="Finished jobs are purged after this.")
    max_body_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Largest request body, counted as it arrives (not from Content-Length)."
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
    part_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Over RabbitMQ: a job travels as messages (parts) of at most this many bytes; one image larger "
        "than that goes in a part of its own.",
    )
    part_images: int = Field(
        16,
        ge=1,
        description="Over RabbitMQ: at most this many images per part, which bounds the work one message holds "
        "a worker to (RabbitMQ's consumer_timeout applies per message).",
    )
    rate_limit: str | None = Field(
        None, description='Requests per API key (or client address) per gateway process, e.g. "600/minute".'
    )
    shutdown_timeout_s: int | None = Field(
        None,
        ge=0,
        description="On SIGTERM, how long the gateway waits for in-flight requests before closing them; at least "
        "blocking_timeout_s (default: blocking_timeout_s + 5).",
    )

    @model_validator(mode="after")
    def _shutdown_covers_blocking_requests(self) -> GatewaySettings:
        """A blocking request accepted just before SIGTERM may wait blocking_timeout_s for its captions."""
        if self.shutdown_timeout_s is not None and self.shutdown_timeout_s < self.blocking_timeout_s:
            raise ValueError(
                f"shutdown_timeout_s ({self.shutdown_timeout_s}) must be at least blocking_timeout_s "
                f"({self.blocking_timeout_s:g}): blocking requests in flight at SIGTERM would be cut off"
            )
        return self

    @property
    def graceful_shutdown_s(self) -> int:
        """How long in-flight requests may take to finish after SIGTERM."""
        if self.shutdown_timeout_s is not None:
            return self.shutdown_timeout_s
        return math.ceil(self.blocking_timeout_s) + 5

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_commas(value)

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
