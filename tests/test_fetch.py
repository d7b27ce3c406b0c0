from pathlib import Path

import pytest

from blipq.errors import FetchFailed, InputTooLarge
from blipq.fetch import fetch_url, is_url


def test_fetches_bytes_from_a_server(http_server: tuple[str, Path]) -> None:
    base, root = http_server
    (root / "blob.bin").write_bytes(b"\x00\x01" * 500)
    assert fetch_url(f"{base}/blob.bin", timeout_s=5, max_bytes=1000) == b"\x00\x01" * 500


def test_byte_cap_is_enforced(http_server: tuple[str, Path]) -> None:
    base, root = http_server
    (root / "big.bin").write_bytes(b"x" * 5000)
    with pytest.raises(InputTooLarge, match="larger than the 4999-byte limit"):
        fetch_url(f"{base}/big.bin", timeout_s=5, max_bytes=4999)


def test_http_errors_and_dead_servers_are_fetch_failures(http_server: tuple[str, Path]) -> None:
    base, _ = http_server
    with pytest.raises(FetchFailed, match="answered HTTP 404"):
        fetch_url(f"{base}/nope.jpg", timeout_s=5, max_bytes=1000)
    with pytest.raises(FetchFailed, match=r"could not fetch http://127\.0\.0\.1:9/x\.jpg: ConnectError"):
        fetch_url("http://127.0.0.1:9/x.jpg", timeout_s=5, max_bytes=1000)


def test_only_http_and_https() -> None:
    with pytest.raises(FetchFailed, match="only http and https URLs are fetched \\(got ftp scheme"):
        fetch_url("ftp://127.0.0.1/x.jpg", timeout_s=1, max_bytes=10)
    assert is_url("https://example.invalid/a.jpg")
    assert not is_url("file:///etc/passwd")
    assert not is_url("photos/http.jpg")
