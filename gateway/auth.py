"""Who is calling: optional API keys, and a per-caller request rate.

Keys are kept only as SHA-256 digests and compared in constant time; a job records the id of
the key that created it (a digest prefix, never the key), and only that key sees it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from blipq.contract.errors import BlipqError, RateLimited, Unauthorized
from blipq.gateway.deps import ServiceDep
from blipq.gateway.settings import GatewaySettings

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


class ApiKeys:
    def __init__(self, digests: list[bytes]) -> None:
        self._digests = digests

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ApiKeys | None:
        """None when no keys are configured (the API is open)."""
        digests = [_digest(key.get_secret_value()) for key in settings.api_keys]
        if settings.api_keys_file is not None:
            digests += _read_keys_file(settings.api_keys_file)
        return cls(digests) if digests else None

    def identify(self, presented: str) -> str | None:
        """The owner id of a valid key, else None. Every stored digest is compared, so the time taken
        does not depend on which key (if any) matched."""
        digest = _digest(presented)
        found: bytes | None = None
        for known in self._digests:
            if hmac.compare_digest(known, digest):
                found = known
        return found.hex()[:32] if found is not None else None


class RateLimiter:
    """A moving window per caller, kept in this API process (the `limits` library)."""

    def __init__(self, rate: str) -> None:
        self.rate = rate
        self._item = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, caller: str) -> None:
        if self._limiter.hit(self._item, caller):
            return
        reset_at, _ = self._limiter.get_window_stats(self._item, caller)
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(f"more than {self.rate} requests (rate_limit); retry in {retry_after} s", retry_after)


@dataclass(frozen=True)
class Caller:
    owner: str | None  # the key's id when API keys are on, else None (every job is visible)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _read_keys_file(path: Path) -> list[bytes]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BlipqError(f"cannot read the API keys file {path}: {exc.strerror or exc}") from None
    digests = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("sha256:"):
            try:
                digest = bytes.fromhex(line.removeprefix("sha256:"))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise BlipqError(f"{path}:{number}: sha256: must be followed by 64 hex digits")
            digests.append(digest)
        else:
            digests.append(_digest(line))
    return digests


async def identify_caller(  # async: FastAPI would run a plain def on a thread, a hop per request
    request: Request,
    service: ServiceDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header_key: Annotated[str | None, Security(_header)],
) -> Caller:
    owner: str | None = None
    if service.keys is not None:
        presented = bearer.credentials if bearer is not None else header_key
        if not presented:
            raise Unauthorized("an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>")
        owner = service.keys.identify(presented)
        if owner is None:
            raise Unauthorized("the API key is not valid")
    if service.rate_limiter is not None:
        service.rate_limiter.check(owner or (request.client.host if request.client else "unknown"))
    return Caller(owner=owner)


CallerDep = Annotated[Caller, Depends(identify_caller)]
