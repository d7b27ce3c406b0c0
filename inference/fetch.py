"""URL -> bytes, safe for URLs chosen by strangers.

The service fetches image URLs that anyone on the internet can send, so a URL must not become a
way into the network the service runs in (SSRF). For each hop the host name is resolved once,
every address it resolves to must be publicly routable (or inside a network the operator
allowed), and the connection goes to that checked address itself: no second DNS lookup that a
rebinding name could answer differently. Redirects are followed by hand so each hop is checked
again. The command line uses the same code with the address check off (the user's own URLs).
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import socket
import time
from dataclasses import dataclass

import httpx

from blipq.contract.errors import FetchFailed, InputTooLarge, InvalidImage
from blipq.contract.images import describe_bytes, sniff_format
from blipq.contract.urls import ALLOWED_SCHEMES

_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Name lookups run here so that a resolver that never answers cannot outlast the deadline.
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="blipq-resolve")


@dataclass(frozen=True)
class FetchPolicy:
    """How URL inputs are fetched. `public_only=False` skips the address check (trusted callers)."""

    timeout_s: float = 20.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3
    public_only: bool = True
    allow_networks: tuple[str, ...] = ()

    @functools.cached_property
    def _networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(network) for network in self.allow_networks)

    def allows(self, address: _IPAddress) -> bool:
        if not self.public_only or _is_public(address):
            return True
        return any(address in network for network in self._networks)


def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    """Download `url` within the policy: scheme, addresses, redirects, total deadline, byte cap, and the
    first bytes must look like an image. Raises FetchFailed, InputTooLarge or InvalidImage."""
    deadline = time.monotonic() + policy.timeout_s
    current = url
    # One place turns transport errors (connecting, sending, or reading the body) into FetchFailed.
    try:
        with httpx.Client(follow_redirects=False, trust_env=False) as client:
            for _ in range(policy.max_redirects + 1):
                target = _parse(current)
                address = _checked_address(target, policy, deadline)
                request = client.build_request(
                    "GET",
                    target.copy_with(host=str(address)),
                    headers={"Host": target.netloc.decode("ascii")},
                    timeout=_remaining(deadline, url),
                    # TLS must still verify the certificate against the name, not the address.
                    extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
                )
                response = client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        current = str(target.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise FetchFailed(f"GET {url} answered HTTP {response.status_code}")
                    return _read_image(response, url, policy, deadline)
                finally:
                    response.close()
    except httpx.TimeoutException:
        raise FetchFailed(f"{url} did not answer within {policy.timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"could not fetch {url}: {type(exc).__name__}: {exc}") from None
    raise FetchFailed(f"{url} redirected more than {policy.max_redirects} times")


def _parse(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise FetchFailed(f"{url!r} is not a valid URL: {exc}") from None
    if target.scheme not in ALLOWED_SCHEMES:
        raise FetchFailed(f"only http and https URLs are fetched (got {target.scheme or 'no'} scheme in {url!r})")
    if not target.host:
        raise FetchFailed(f"{url!r} has no host")
    return target


def _checked_address(target: httpx.URL, policy: FetchPolicy, deadline: float) -> _IPAddress:
    """Resolve the host once; refuse it if ANY of its addresses is off limits, else the first address."""
    port = target.port or (443 if target.scheme == "https" else 80)
    lookup = _resolver.submit(socket.getaddrinfo, target.host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        raise FetchFailed(f"looking up {target.host} took too long") from None
    except (OSError, UnicodeError) as exc:
        raise FetchFailed(f"cannot resolve {target.host}: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise FetchFailed(f"{target.host} has no addresses")
    for address in addresses:
        if not policy.allows(address):
            what = str(address) if str(address) == target.host else f"{target.host} resolves to {address}, which"
            raise FetchFailed(
                f"refused to fetch {target.scheme}://{target.netloc.decode('ascii')}: {what} is not a public "
                f"address ({_kind(address)}); private networks can be allowed with fetch_allow_networks"
            )
    return addresses[0]


def _read_image(response: httpx.Response, url: str, policy: FetchPolicy, deadline: float) -> bytes:
    """Stream the body under the byte cap and the deadline, stopping early when it is not an image."""
    chunks: list[bytes] = []
    received = 0
    sniffed = False
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > policy.max_bytes:
            raise InputTooLarge(f"{url} is larger than the max_fetch_bytes limit of {policy.max_bytes} bytes")
        chunks.append(chunk)
        if not sniffed and received >= 16:
            _check_image_head(b"".join(chunks), url)
            sniffed = True
        if time.monotonic() > deadline:
            raise FetchFailed(f"{url} took longer than {policy.timeout_s:g} s to download")
    data = b"".join(chunks)
    if not sniffed:
        _check_image_head(data, url)
    return data


def _check_image_head(head: bytes, url: str) -> None:
    if not head:
        raise InvalidImage(f"{url} returned an empty body")
    if sniff_format(head) is None:
        raise InvalidImage(f"{url} is not a supported image (got {describe_bytes(head)})")


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchFailed(f"{url} could not be fetched within the time limit")
    return left


def _is_public(address: _IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address inside are judged by that address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public(embedded)
        if address.teredo is not None:
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _kind(address: _IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"IPv4-mapped {_kind(address.ipv4_mapped)}"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"):
        return "shared address space (CGNAT)"
    return "not globally routable"
