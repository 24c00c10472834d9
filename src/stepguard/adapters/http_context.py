"""Build a `RequestContext` from HTTP facts; forwarded headers count only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from stepguard.core.canonical import canonical_host, canonical_method, canonical_path, split_target
from stepguard.core.context import RequestContext
from stepguard.core.errors import BadRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

IDENTITY_HEADERS = ("remote-user", "remote-groups", "remote-email", "remote-name",
                    "stepguard-acr", "stepguard-amr")


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, cidrs: Sequence[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def trusts(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in n for n in self.networks)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The rightmost X-Forwarded-For address that is not a trusted proxy (or the peer).

        Only a trusted peer's header counts. Every hop read on the way (from the right up to and
        including the client's address) must be a plain IP address: anything else from a trusted
        peer is refused (BadRequest), never replaced by the proxy's own address.
        """
        if not forwarded_for or not self.trusts(peer):
            return peer
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip(" \t")
            if not _is_ip(hop):
                raise BadRequest("X-Forwarded-For from a trusted proxy is not a list of addresses")
            if not self.trusts(hop):
                return hop
        return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_identity_header(name: str) -> bool:
    """Client-sent identity headers in any case, with `_` for `-` (SECURITY.md case 2)."""
    return name.lower().replace("_", "-") in IDENTITY_HEADERS


def build_context(*, method: str, scheme: str, host: str, target: str, client_ip: str,
                  headers: Headers, device_id: str = "") -> RequestContext:
    """Canonical context from the original request's parts (BadRequest if ambiguous)."""
    raw_path, query = split_target(target or "/")
    return RequestContext(
        method=canonical_method(method), host=canonical_host(host),
        path=canonical_path(raw_path), scheme="https" if scheme == "https" else "http",
        query=query, client_ip=client_ip, user_agent=headers.get("user-agent", "")[:512],
        device_id=device_id)


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, host, target) of an absolute URL such as nginx's X-Original-URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise BadRequest("expected an absolute http(s) URL without user information")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.netloc, target


def wants_html(headers: Headers) -> bool:
    """A browser navigation (redirect it) rather than an API client or XHR (401 RFC 9470)."""
    if headers.get("x-requested-with", "").lower() == "xmlhttprequest":
        return False
    if headers.get("authorization", "").lower().startswith("bearer "):
        return False
    return "text/html" in headers.get("accept", "")
