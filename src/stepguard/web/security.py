"""Web security helpers for the portal: response headers, CSRF, cookies and return URLs.

- Headers (SECURITY.md "Pages"): a strict CSP without inline script or style, no framing,
  `Cache-Control: no-store`, HSTS on https. `SecurityHeadersMiddleware` adds them to portal
  responses; forward-auth replies (`/api/authz/`) stay minimal, and so do `/metrics`, `/healthz`
  and `/readyz`. A header the route already set is kept (a route may be stricter).
- CSRF (ASVS V3.5, SECURITY.md case 15): a signed double-submit token bound to the session.
  `csrf_token` = base64url(nonce(16) ‖ HMAC-SHA256(key, domain ‖ nonce ‖ session binding)); it
  goes in every POST form (`csrf_token`) or the `X-CSRF-Token` header. `check_csrf` also refuses
  a foreign or `null` `Origin`, and, when `Origin` is absent, a foreign `Referer`. The binding is
  the session's id (or, for anonymous pages such as login, a pre-session cookie value), never a
  secret that the token would reveal: the MAC hides it.
- Cookies: `__Host-` on https without a domain, `__Secure-` on https with one; HttpOnly, Lax, `/`.
- Return URLs (ASVS V3.7.2, SECURITY.md case 4): `safe_return_url` accepts a same-site path or an
  http(s) URL on a protected domain; everything else becomes the caller's default.
  Protected-domain entries are `host`, `*.suffix` (the suffix itself and every subdomain) and
  either one with `:port` to pin the port. Hosts are compared in ASCII: configure an IDN domain
  in its punycode (`xn--…`) form; a return URL with a non-ASCII host is refused (lookalikes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepguard.core.errors import CsrfRejected

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "CsrfRejected",
    "DomainEntry",
    "HSTS",
    "RELAYED",
    "SecurityHeadersMiddleware",
    "check_csrf",
    "cookie_attributes",
    "csrf_token",
    "is_exempt_path",
    "merge_headers",
    "parse_domain_entry",
    "raw_headers",
    "safe_return_url",
    "security_headers",
]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=()"
HSTS = "max-age=31536000; includeSubDomains"
EXEMPT_PREFIXES = ("/api/authz",)
EXEMPT_PATHS = ("/metrics", "/healthz", "/readyz")

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_CSRF_DOMAIN = b"stepguard-csrf\0"
_NONCE_BYTES = 16
_MAC_BYTES = 32
_MIN_KEY_BYTES = 16
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{64}")  # 48 bytes, unpadded base64url

_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$&'*+.^_`|~-]+")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NETLOC = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{0,5})?")
_ENTRY = re.compile(rf"(\*\.)?({_LABEL}(?:\.{_LABEL})*)(?::([0-9]{{1,5}}))?")
_ABSOLUTE = re.compile(r"https?://", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_URL_LENGTH = 4096


# --- headers -------------------------------------------------------------------------------


def security_headers(*, https: bool) -> list[tuple[str, str]]:
    """The headers every portal page carries (HSTS only over https)."""
    headers = [
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        # same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on
        # same-origin POSTs, which the CSRF check (rightly) refuses.
        ("Referrer-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Permissions-Policy", PERMISSIONS_POLICY),
    ]
    if https:
        headers.append(("Strict-Transport-Security", HSTS))
    return headers


def raw_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as raw ASGI pairs, names lower-case."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def is_exempt_path(path: str) -> bool:
    """Paths whose replies stay minimal: forward-auth, metrics and health probes."""
    for prefix in (*EXEMPT_PREFIXES, *EXEMPT_PATHS):
        if path == prefix or path.startswith(prefix + "/"):
            return True
    return False


# Set in an HTTP scope by the reverse proxy before it sends an upstream's answer: the answer is
# the application's, with its upstream's `response_headers`, never the portal's page headers.
RELAYED = "stepguard.relayed"


class SecurityHeadersMiddleware:
    """Pure ASGI middleware adding `security_headers` to every portal response (not to an
    upstream's answer relayed through it: `RELAYED`)."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.headers = raw_headers(security_headers(https=https))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_exempt_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and not scope.get(RELAYED):
                message["headers"] = merge_headers(message.get("headers", ()), self.headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def merge_headers(
    existing: Iterable[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """`existing` plus those of `extra` it does not set itself (raw pairs, names lower-case
    in `extra`), as a new list."""
    headers = list(existing)
    present = {name.lower() for name, _ in headers}
    return headers + [(name, value) for name, value in extra if name not in present]


# --- CSRF ----------------------------------------------------------------------------------


def csrf_token(*, key: bytes, session_binding: str) -> str:
    """A fresh token for forms of this session (or pre-session); many may be valid at once."""
    _require_key(key)
    if not session_binding:
        raise ValueError("a CSRF token needs a session binding")
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _b64encode(nonce + _csrf_mac(key, nonce, session_binding))


def check_csrf(
    *,
    key: bytes,
    session_binding: str,
    token: str | None,
    origin: str | None,
    referer: str | None,
    allowed_origins: Sequence[str],
) -> None:
    """Raise `CsrfRejected` unless the request comes from an allowed origin with a valid token.

    An empty header counts as absent. Without `Origin` and `Referer` the token alone decides.
    """
    _check_origin(origin=origin, referer=referer, allowed_origins=allowed_origins)
    _check_token(key=key, session_binding=session_binding, token=token)


def _check_origin(
    *, origin: str | None, referer: str | None, allowed_origins: Sequence[str]
) -> None:
    allowed = {o for o in map(_origin_of, allowed_origins) if o is not None}
    if origin:
        if origin.strip().lower() == "null":
            raise CsrfRejected("the request has a null Origin")
        if _origin_of(origin) not in allowed:
            raise CsrfRejected("the request came from another origin")
    elif referer and _origin_of(referer) not in allowed:
        raise CsrfRejected("the request was referred by another origin")


def _check_token(*, key: bytes, session_binding: str, token: str | None) -> None:
    _require_key(key)
    if not token:
        raise CsrfRejected("the form's CSRF token is missing")
    if not session_binding:
        raise CsrfRejected("the CSRF token cannot be checked without a session")
    if not _TOKEN_SHAPE.fullmatch(token):
        raise CsrfRejected("the form's CSRF token is malformed")
    raw = base64.urlsafe_b64decode(token)  # 64 base64url characters: always 48 bytes
    nonce, mac = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
    if not hmac.compare_digest(mac, _csrf_mac(key, nonce, session_binding)):
        raise CsrfRejected("the form's CSRF token is not valid for this session")


def _csrf_mac(key: bytes, nonce: bytes, session_binding: str) -> bytes:
    message = _CSRF_DOMAIN + nonce + session_binding.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).digest()


def _require_key(key: bytes) -> None:
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"the CSRF key must be at least {_MIN_KEY_BYTES} bytes")


def _origin_of(url: str) -> str | None:
    """`scheme://host[:port]` (default port dropped), or None when `url` has no http(s) origin."""
    parts = _split(url.strip())
    if parts is None or parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    port = _port(parts)
    if port is None:
        return None
    suffix = "" if port == _DEFAULT_PORTS[parts.scheme] else f":{port}"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6 keeps []
    return f"{parts.scheme}://{host}{suffix}"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- cookies -------------------------------------------------------------------------------


def cookie_attributes(*, name: str, https: bool, domain: str = "") -> tuple[str, dict[str, Any]]:
    """The cookie's name (prefixed on https) and keyword arguments for Starlette's `set_cookie`."""
    if not _COOKIE_NAME.fullmatch(name) or name.lower().startswith(("__host-", "__secure-")):
        raise ValueError("the cookie name must be a plain token without a __Host-/__Secure- prefix")
    if domain and not _HOST.fullmatch(domain.lower().removeprefix(".")):
        raise ValueError("the cookie domain must be a host name")
    attributes: dict[str, Any] = {"httponly": True, "secure": https, "samesite": "lax", "path": "/"}
    if domain:
        attributes["domain"] = domain
    prefix = ("__Secure-" if domain else "__Host-") if https else ""
    return prefix + name, attributes


# --- return URLs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainEntry:
    """One protected domain: `host`, or every host under it when `wildcard`; `port` pins one."""

    host: str
    wildcard: bool = False
    port: int | None = None

    def allows(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.wildcard:
            return host == self.host or host.endswith("." + self.host)
        return host == self.host


def parse_domain_entry(entry: str) -> DomainEntry:
    """Parse `host`, `*.suffix`, `host:port` or `*.suffix:port`; raise ValueError otherwise."""
    match = _ENTRY.fullmatch(entry.strip().lower())
    if match is None:
        raise ValueError(f"not a host, *.suffix or host:port: {entry!r}")
    wildcard, host, port = match.group(1) is not None, match.group(2), match.group(3)
    if wildcard and "." not in host:
        raise ValueError(f"a wildcard needs at least two labels after '*.': {entry!r}")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"the port is out of range: {entry!r}")
    return DomainEntry(host=host, wildcard=wildcard, port=int(port) if port else None)


def safe_return_url(url: str | None, *, protected_domains: Sequence[str], default: str) -> str:
    """`url` when it is a same-site path or an http(s) URL on a protected domain, else `default`.

    Refused: other hosts, `//host`, `/\\host`, other schemes (`javascript:`, `data:`), userinfo,
    and backslashes, spaces, control characters and non-ASCII anywhere as written; decoded once
    and checked again, backslashes and control characters (C0, DEL, C1) and a path that becomes
    `//host` or `/\\host` are refused too (percent-encoded spaces and UTF-8 stay: they are how
    such paths are written). Invalid domain entries match nothing.
    """
    if url is None or not _is_safe(url, _entries(protected_domains)):
        return default
    return url


def _entries(protected_domains: Sequence[str]) -> list[DomainEntry]:
    entries = []
    for entry in protected_domains:
        try:
            entries.append(parse_domain_entry(entry))
        except ValueError:
            continue
    return entries


def _is_safe(url: str, entries: list[DomainEntry]) -> bool:
    if not url or len(url) > _MAX_URL_LENGTH or not _printable_ascii(url):
        return False
    decoded = unquote(url)
    if _has_control_or_backslash(decoded):
        return False
    if url.startswith("/"):
        return _is_local_path(url) and _is_local_path(decoded)
    # The host part may hold no '%' (see _NETLOC), so decoding cannot move the URL to another host.
    return _is_allowed_absolute(url, entries)


def _is_local_path(url: str) -> bool:
    return url.startswith("/") and not url.startswith("//")


def _is_allowed_absolute(url: str, entries: list[DomainEntry]) -> bool:
    if not _ABSOLUTE.match(url):
        return False
    parts = _split(url)
    if parts is None or not _NETLOC.fullmatch(parts.netloc):
        return False
    host, port = parts.hostname, _port(parts)
    if not host or port is None or not _HOST.fullmatch(host):
        return False
    return any(entry.allows(host, port) for entry in entries)


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _port(parts: SplitResult) -> int | None:
    """The explicit or default port, or None when it is invalid."""
    try:
        port = parts.port
    except ValueError:
        return None
    return port if port is not None else _DEFAULT_PORTS.get(parts.scheme.lower())


def _printable_ascii(text: str) -> bool:
    return all("!" <= char <= "~" for char in text)


def _has_control_or_backslash(text: str) -> bool:
    return "\\" in text or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
