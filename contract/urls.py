"""Which image URLs a request may carry (checked by the gateway, fetched by the inference side)."""

from __future__ import annotations

from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")


def is_url(text: str) -> bool:
    """An http(s) URL with a host name; "http://" alone or "http:/path" is not one."""
    try:
        parts = urlsplit(text)
        return parts.scheme.lower() in ALLOWED_SCHEMES and "://" in text and bool(parts.hostname)
    except ValueError:  # an unbalanced "[" in the host, a bad port
        return False
