"""URL fetching against real loopback servers: limits, and the SSRF address rules.

Loopback stands in for both sides: a server allowed by `allow_networks` plays a public host, and
everything else on loopback (or in private ranges, never connected to) plays the inside network.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from blipq.contract.errors import FetchFailed, InputTooLarge, InvalidImage
from blipq.contract.urls import is_url
from blipq.inference.fetch import FetchPolicy, fetch_url
from tests.helpers import encode, noise

PNG = encode(noise(32, 24, seed=4), "PNG")
LOOPBACK_ONLY = FetchPolicy(timeout_s=5, allow_networks=("127.0.0.1/32",))


class ImageHandler(BaseHTTPRequestHandler):
    """/img.png, /page.html, /redirect?to=URL, /loop, /slow, /sleepy-redirect; records the Host header of every
    request."""

    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hosts.append(self.headers.get("Host", ""))
        if self.path == "/img.png":
            self._send(200, PNG, "image/png")
        elif self.path == "/page.html":
            self._send(200, b"<!doctype html><html><body>not an image</body></html>", "text/html")
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect?to="))
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/sleepy-redirect":
            time.sleep(0.4)  # each hop answers in time; all of them together do not
            self.send_response(302)
            self.send_header("Location", "/sleepy-redirect")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            try:
                for byte in PNG:  # one byte every 50 ms: each read is quick, the whole is not
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up at its deadline, as it should
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(host: str) -> Iterator[str]:
    server = ThreadingHTTPServer((host, 0), ImageHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{host}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The 'public' server, on 127.0.0.1."""
    yield from _serve("127.0.0.1")


@pytest.fixture(scope="module")
def inside() -> Iterator[str]:
    """A server on another loopback address (127.0.0.2), standing for a host inside the network."""
    yield from _serve("127.0.0.2")


def test_fetches_an_allowed_image(site: str) -> None:
    assert fetch_url(f"{site}/img.png", LOOPBACK_ONLY) == PNG


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/img.png", r"127\.0\.0\.1 is not a public address \(loopback\)"),
        ("http://[::1]:{port}/img.png", r"::1 is not a public address \(loopback\)"),
        ("http://10.20.30.40/img.png", r"10\.20\.30\.40 is not a public address \(private\)"),
        ("http://192.168.1.1/img.png", r"is not a public address \(private\)"),
        ("http://169.254.169.254/latest/meta-data/", r"169\.254\.169\.254 is not a public address \(link-local\)"),
        ("http://100.64.0.1/img.png", r"not a public address \(shared address space \(CGNAT\)\)"),
        ("http://224.0.0.1/img.png", r"not a public address \(multicast\)"),
        ("http://[fec0::1]/img.png", r"fec0::1 is not a public address \(site-local\)"),
        ("http://0.0.0.0:{port}/img.png", r"not a public address \(unspecified\)"),
        ("http://[::ffff:127.0.0.1]:{port}/img.png", r"not a public address \(IPv4-mapped loopback\)"),
        ("http://[fe80::1]/img.png", r"not a public address \(link-local\)"),
        ("http://localhost:{port}/img.png", r"localhost resolves to (127\.0\.0\.1|::1), which is not a public address"),
    ],
)
def test_addresses_that_are_not_public_are_refused_before_connecting(site: str, url: str, reason: str) -> None:
    port = site.rsplit(":", 1)[1]
    ImageHandler.hosts.clear()
    with pytest.raises(FetchFailed, match=reason):
        fetch_url(url.format(port=port), FetchPolicy(timeout_s=5))
    assert ImageHandler.hosts == []  # nothing reached the server


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.png", "file:///etc/passwd", "gopher://127.0.0.1:70/"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(FetchFailed, match="only http and https URLs are fetched"):
        fetch_url(url, FetchPolicy())
    assert not is_url(url)
    assert is_url("https://example.invalid/a.jpg")
    assert not is_url("photos/http.jpg")


def test_a_redirect_into_the_network_is_refused(site: str, inside: str) -> None:
    url = f"{site}/redirect?to={inside}/img.png"
    with pytest.raises(FetchFailed, match=r"127\.0\.0\.2 is not a public address \(loopback\)"):
        fetch_url(url, LOOPBACK_ONLY)
    # The same redirect is followed once its target is allowed too: the refusal above was the address rule.
    both = FetchPolicy(timeout_s=5, allow_networks=("127.0.0.1/32", "127.0.0.2/32"))
    assert fetch_url(url, both) == PNG


def test_redirects_are_capped(site: str) -> None:
    with pytest.raises(FetchFailed, match="redirected more than 3 times"):
        fetch_url(f"{site}/loop", LOOPBACK_ONLY)


def test_the_checked_address_is_the_one_connected_to(site: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved once and the request goes to that address, with the name as Host: a DNS
    answer that changes between a check and a connect (rebinding) has no second lookup to change."""
    port = int(site.rsplit(":", 1)[1])
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real_getaddrinfo("127.0.0.1" if host == "images.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    ImageHandler.hosts.clear()
    assert fetch_url(f"http://images.test:{port}/img.png", LOOPBACK_ONLY) == PNG
    assert lookups.count("images.test") == 1
    assert ImageHandler.hosts == [f"images.test:{port}"]


def test_limits_deadline_and_content(site: str) -> None:
    with pytest.raises(InputTooLarge, match=f"larger than the max_fetch_bytes limit of {len(PNG) - 1} bytes"):
        fetch_url(f"{site}/img.png", FetchPolicy(max_bytes=len(PNG) - 1, allow_networks=("127.0.0.1/32",)))
    with pytest.raises(InvalidImage, match="is not a supported image \\(got an HTML page\\)"):
        fetch_url(f"{site}/page.html", LOOPBACK_ONLY)
    with pytest.raises(FetchFailed, match="answered HTTP 404"):
        fetch_url(f"{site}/nope.jpg", LOOPBACK_ONLY)
    with pytest.raises(FetchFailed, match=r"could not fetch http://127\.0\.0\.1:9/x\.jpg: ConnectError"):
        fetch_url("http://127.0.0.1:9/x.jpg", LOOPBACK_ONLY)


@pytest.mark.parametrize(
    ("server", "path"), [("site", "/slow"), ("crawling_server", "/"), ("site", "/sleepy-redirect")]
)
def test_the_deadline_covers_headers_redirects_and_body(request: pytest.FixtureRequest, server: str, path: str) -> None:
    """Each read arrives well within the deadline; the whole does not (a body of len(PNG) * 50 ms, a status line
    that never ends, redirects of 0.4 s each)."""
    policy = FetchPolicy(timeout_s=1, max_redirects=5, allow_networks=("127.0.0.1/32",))
    base = request.getfixturevalue(server)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"could not be fetched within 1 s"):
        fetch_url(f"{base}{path}", policy)
    assert time.monotonic() - started < 1.5


def test_the_command_line_policy_skips_the_address_rule(site: str) -> None:
    assert fetch_url(f"{site}/img.png", FetchPolicy(public_only=False)) == PNG


def test_an_http_server_fixture_still_works(http_server: tuple[str, Path]) -> None:
    base, root = http_server
    (root / "pic.png").write_bytes(PNG)
    assert fetch_url(f"{base}/pic.png", FetchPolicy(public_only=False)) == PNG
