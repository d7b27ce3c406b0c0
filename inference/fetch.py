"""URL -> bytes, safe for URLs chosen by strangers.

The service fetches image URLs that anyone on the internet can send, so a URL must not become a
way into the network the service runs in (SSRF). For each hop the host name is resolved once,
every address it resolves to must be publicly routable (or inside a network the operator
allowed), and the connection goes to that checked address itself: no second DNS lookup that a
rebinding name could answer differently. Redirects are followed by hand so each hop is checked
again. The command line uses the same code with the address check off (the user's own URLs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from blipq.contract.errors import FetchFailed, InputTooLarge, InvalidImage
from blipq.contract.images import describe_bytes, sniff_format
from blipq.contract.urls import ALLOWED_SCHEMES

_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Name lookups run here (bounded) and are abandoned at the fetch's deadline if the resolver never answers.
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
    """Download `url` within the policy: scheme, addresses, redirects, byte cap, and the first bytes must look
    like an image. Raises FetchFailed, InputTooLarge or InvalidImage.

    The deadline covers everything: name lookups, connecting, every redirect, the response headers and the
    body. httpx's own timeouts bound each read, so a server that sends a byte just often enough would
    outlast them; the fetch runs as a coroutine (on a loop of this thread's own) that is cancelled at the
    deadline, which closes its connection."""
    try:
        return asyncio.run(asyncio.wait_for(_fetch(url, policy), policy.timeout_s))
    except TimeoutError:
        raise FetchFailed(f"{url} could not be fetched within {policy.timeout_s:g} s") from None


async def _fetch(url: str, policy: FetchPolicy) -> bytes:
    current = url
    # One place turns transport errors (connecting, sending, or reading the body) into FetchFailed.
    try:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=policy.timeout_s) as client:
            for _ in range(policy.max_redirects + 1):
                target = _parse(current)
                address = await _checked_address(target, policy)
                request = client.build_request(
                    "GET",
                    target.copy_with(host=str(address)),
                    headers={"Host": target.netloc.decode("ascii")},
                    # TLS must still verify the certificate against the name, not the address.
                    extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
                )
                response = await client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        current = str(target.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise FetchFailed(f"GET {url} answered HTTP {response.status_code}")
                    return await _read_image(response, url, policy)
                finally:
                    await response.aclose()
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


async def _checked_address(target: httpx.URL, policy: FetchPolicy) -> _IPAddress:
    """Resolve the host once; refuse it if ANY of its addresses is off limits, else the first address."""
    port = target.port or (443 if target.scheme == "https" else 80)
    lookup = functools.partial(socket.getaddrinfo, target.host, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.get_running_loop().run_in_executor(_resolver, lookup)
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


async def _read_image(response: httpx.Response, url: str, policy: FetchPolicy) -> bytes:
    """Stream the body under the byte cap, stopping early when it is not an image."""
    chunks: list[bytes] = []
    received = 0
    sniffed = False
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > policy.max_bytes:
            raise InputTooLarge(f"{url} is larger than the max_fetch_bytes limit of {policy.max_bytes} bytes")
        chunks.append(chunk)
        if not sniffed and received >= 16:
            _check_image_head(b"".join(chunks), url)
            sniffed = True
    data = b"".join(chunks)
    if not sniffed:
        _check_image_head(data, url)
    return data


def _check_image_head(head: bytes, url: str) -> None:
    if not head:
        raise InvalidImage(f"{url} returned an empty body")
    if sniff_format(head) is None:
        raise InvalidImage(f"{url} is not a supported image (got {describe_bytes(head)})")


def _is_public(address: _IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address inside are judged by that address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public(embedded)
        if address.teredo is not None or address.is_site_local:  # fec0::/10: deprecated, still routed inside
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _kind(address: _IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"IPv4-mapped {_kind(address.ipv4_mapped)}"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"):
        return "shared address space (CGNAT)"
    return "not globally routable"
