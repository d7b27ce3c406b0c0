"""The gateway's settings that depend on each other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blipq.gateway.settings import GatewaySettings


def test_the_shutdown_timeout_covers_a_blocking_request_by_default() -> None:
    assert GatewaySettings().graceful_shutdown_s == 65
    assert GatewaySettings(blocking_timeout_s=10.5).graceful_shutdown_s == 16
    assert GatewaySettings(shutdown_timeout_s=90).graceful_shutdown_s == 90


def test_a_shutdown_timeout_shorter_than_the_blocking_timeout_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be at least blocking_timeout_s"):
        GatewaySettings(shutdown_timeout_s=30)
