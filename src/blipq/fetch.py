"""URL -> bytes. The one place that touches the network for inputs, so it can be hardened in one place."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from blipq.errors import FetchFailed, InputTooLarge

ALLOWED_SCHEMES = ("http", "https")


def is_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in ALLOWED_SCHEMES and "://" in text


def fetch_url(url: str, *, timeout_s: float, max_bytes: int, client: httpx.Client | None = None) -> bytes:
    """Download `url`, refusing non-http(s) schemes, slow servers and bodies over `max_bytes`.

    The byte cap is enforced while streaming, so a lying or missing Content-Length does not matter.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise FetchFailed(f"only http and https URLs are fetched (got {scheme or 'no'} scheme in {url!r})")
    owned = client is None
    http = client or httpx.Client(timeout=timeout_s, follow_redirects=True, max_redirects=3)
    try:
        with http.stream("GET", url, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise FetchFailed(f"GET {url} answered HTTP {response.status_code}")
            chunks: list[bytes] = []
            received = 0
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise InputTooLarge(f"{url} is larger than the {max_bytes}-byte limit for URL inputs")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise FetchFailed(f"could not fetch {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if owned:
            http.close()
