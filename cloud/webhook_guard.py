"""Tenants' webhooks must not reach the cloud's own network (server-side request forgery).

A tenant writes the webhook URL of a rule; the cloud calls it. Without a guard, ``http://169.254.169.254/``
(cloud metadata), ``http://127.0.0.1:5432`` or an internal admin page would be one rule away. The check
is made where the connection is made, after DNS resolution: the client's network backend resolves the
host, refuses addresses that are loopback, link-local, private, multicast, unspecified or reserved
(``ipaddress``'s ``is_global``; IPv4-mapped IPv6 is judged as the IPv4 address), and connects to the
vetted address itself, so a name that resolves differently a moment later (DNS rebinding) cannot slip
through. TLS still checks the certificate against the host name. Redirects are not followed, proxies
from the environment are not used.

Configurable (``CloudSettings``): ``webhook_allow`` lists networks that may be called even though they
are not global (an operations host inside the plant network, say ``10.20.0.0/24``);
``webhook_allow_private`` lets private ranges (RFC 1918, RFC 6598 shared, IPv6 ULA) through while
loopback, link-local and the rest stay refused. A refusal is permanent: the job is dead-lettered at
once with the reason, never retried.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from carbonlink.rules.actions import Permanent

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                                   "fc00::/7"))


class TargetRefused(Permanent):
    """The webhook's host is (or resolves to) an address the cloud does not call."""


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``10.20.0.0/24``, ``192.0.2.7`` or ``fd00::/8``; ValueError naming the bad entry."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.20.0.0/24)") from None
    return tuple(out)


@dataclass(frozen=True)
class TargetPolicy:
    allow: tuple[IPNetwork, ...] = ()
    allow_private: bool = False

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be called, or None when it may."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip.version == n.version and ip in n for n in self.allow):
            return None
        for test, name in ((ip.is_loopback, "a loopback address"), (ip.is_link_local, "a link-local address"),
                           (ip.is_multicast, "a multicast address"), (ip.is_unspecified, "the unspecified address")):
            if test:
                return name
        if any(ip.version == n.version and ip in n for n in _PRIVATE):
            return None if self.allow_private else "a private address"
        if not ip.is_global:
            return "a reserved address"
        return None

    def check_host(self, host: str) -> str | None:
        """For a URL's host written as an IP literal (or ``localhost``): why it is refused, before any call."""
        if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or \
                host.lower().endswith(".localhost"):
            return f"{host} is the cloud itself"
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None  # a name: judged when it is resolved
        why = self.refusal(ip)
        return f"{host} is {why}" if why else None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, vets and connects to the vetted address; everything else is the default backend's."""

    def __init__(self, policy: TargetPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore)
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from None
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        allowed: list[str] = []
        refused: list[str] = []
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            why = self.policy.refusal(ip)
            if why is None:
                if str(ip) not in allowed:
                    allowed.append(str(ip))
            else:
                refused.append(f"{ip} is {why}")
        if not allowed:
            raise TargetRefused(f"webhook host {host} is not called: {'; '.join(dict.fromkeys(refused))}"
                                " (the cloud calls only public addresses; see webhook_allow)")
        error: Exception | None = None
        for ip_text in allowed:  # only vetted addresses: a second lookup can never change where this goes
            try:
                return await self.inner.connect_tcp(ip_text, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("webhooks cannot call unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the connection pool built on ``GuardedBackend`` (no proxies from the environment)."""

    def __init__(self, policy: TargetPolicy) -> None:
        super().__init__(trust_env=False)
        # httpx builds its pool in __init__ without a way to pass a network backend: build it again with ours.
        self._pool = httpcore.AsyncConnectionPool(ssl_context=httpx.create_ssl_context(),
                                                  network_backend=GuardedBackend(policy))


def guarded_client(policy: TargetPolicy) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=GuardedTransport(policy), follow_redirects=False, trust_env=False)
