"""The exact rules of web/security that an attacker or an operator meets: the words of every
CSRF, cookie and domain-entry refusal, the boundaries (key length, ports), the byte layout of a
CSRF token, origins on other ports and schemes, leading-dot cookie domains, an invalid protected
domain among good ones, and the header middleware on scopes and messages that omit optional
keys. Found by `make mutate`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re

import pytest
from starlette.types import Message, Receive, Scope, Send

from stepguard.core.errors import CsrfRejected
from stepguard.web import security
from stepguard.web.security import (
    CONTENT_SECURITY_POLICY,
    DomainEntry,
    SecurityHeadersMiddleware,
    cookie_attributes,
    csrf_token,
    parse_domain_entry,
    safe_return_url,
    security_headers,
)
from tests.unit.test_web_security import BINDING, DEFAULT, KEY, PORTAL, _check

# --- CSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"origin": "null"}, "the request has a null Origin"),
        ({"origin": " Null "}, "the request has a null Origin"),
        ({"origin": "https://evil.com"}, "the request came from another origin"),
        ({"referer": "https://evil.com/page"}, "the request was referred by another origin"),
        ({"token": None}, "the form's CSRF token is missing"),
        ({"token": ""}, "the form's CSRF token is missing"),
        ({"session_binding": ""}, "the CSRF token cannot be checked without a session"),
        ({"token": "abc"}, "the form's CSRF token is malformed"),
        ({"token": "A" * 64}, "the form's CSRF token is not valid for this session"),
    ],
)
def test_every_csrf_refusal_says_exactly_why(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(CsrfRejected) as caught:
        _check(**overrides)
    assert (caught.value.reason, str(caught.value)) == (reason, reason)


def test_a_csrf_key_needs_at_least_16_bytes() -> None:
    token = csrf_token(key=b"k" * 16, session_binding=BINDING)
    _check(key=b"k" * 16, token=token)
    message = re.escape("the CSRF key must be at least 16 bytes")
    with pytest.raises(ValueError, match=f"^{message}$"):
        csrf_token(key=b"k" * 15, session_binding=BINDING)
    with pytest.raises(ValueError, match=f"^{message}$"):
        _check(key=b"k" * 15)


def test_a_csrf_token_needs_a_session_binding() -> None:
    with pytest.raises(ValueError, match="^a CSRF token needs a session binding$"):
        csrf_token(key=KEY, session_binding="")


def _reference_token(nonce: bytes, binding: str) -> str:
    """SECURITY.md: base64url(nonce ‖ HMAC-SHA256(key, domain ‖ nonce ‖ binding)), 64 chars."""
    message = b"stepguard-csrf\0" + nonce + binding.encode("utf-8")
    mac = hmac.new(KEY, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(nonce + mac).decode("ascii")


def test_a_csrf_token_is_the_nonce_and_its_domain_separated_mac_in_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also when the token ends in a character that a careless strip would eat ('X')."""
    binding = "sessiön-7"
    nonce = next(
        n.to_bytes(16, "big")
        for n in range(10_000)
        if _reference_token(n.to_bytes(16, "big"), binding).endswith("X")
    )
    monkeypatch.setattr(security.secrets, "token_bytes", lambda size: nonce[:size])
    token = csrf_token(key=KEY, session_binding=binding)
    assert token == _reference_token(nonce, binding) and len(token) == 64
    _check(token=token, session_binding=binding)


def test_an_origin_on_another_port_than_the_allowed_one_is_refused() -> None:
    """`http://localhost:9091` is allowed; the same host on any other port is not."""
    for origin in ("http://localhost:9092", "http://localhost:80", "https://localhost:9091"):
        with pytest.raises(CsrfRejected, match="^the request came from another origin$"):
            _check(origin=origin)


@pytest.mark.parametrize(
    "origin", ["ftp://portal.example.com:21", "ws://portal.example.com:443", "https://:443"]
)
def test_an_origin_without_an_http_host_is_refused_as_foreign(origin: str) -> None:
    with pytest.raises(CsrfRejected, match="^the request came from another origin$"):
        _check(origin=origin)


def test_an_allowed_origin_that_is_no_http_origin_is_ignored() -> None:
    allowed = ["ftp://portal.example.com:21", "https://:443", PORTAL]
    _check(origin=PORTAL, allowed_origins=allowed)
    with pytest.raises(CsrfRejected, match="another origin"):
        _check(origin="ftp://portal.example.com:21", allowed_origins=allowed)


def test_an_ipv6_origin_is_not_confused_with_another_address_and_port() -> None:
    with pytest.raises(CsrfRejected):
        _check(origin="https://[::1:8443]", allowed_origins=["https://[::1]:8443"])
    with pytest.raises(CsrfRejected):
        _check(origin="http://[::1:443]", allowed_origins=["http://[::1]:443"])
    _check(origin="https://[::1]:8443", allowed_origins=["https://[::1]:8443"])
    _check(origin="https://[::1]", allowed_origins=["https://[::1]:443"])


# --- cookies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["example.com.", "..example.com", "-x.example.com"])
def test_a_cookie_domain_that_is_no_host_name_is_refused(domain: str) -> None:
    with pytest.raises(ValueError, match="^the cookie domain must be a host name$"):
        cookie_attributes(name="sg", https=True, domain=domain)


def test_a_prefixed_cookie_name_is_refused_with_the_reason() -> None:
    message = "the cookie name must be a plain token without a __Host-/__Secure- prefix"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cookie_attributes(name="__Host-sg", https=True)


# --- return URLs: domain entries -------------------------------------------------------------


@pytest.mark.parametrize("port", [1, 65535])
def test_a_domain_entry_port_may_be_anything_from_1_to_65535(port: int) -> None:
    entry = parse_domain_entry(f"app.example.com:{port}")
    assert entry == DomainEntry("app.example.com", port=port)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("app.example.com:0", "the port is out of range: 'app.example.com:0'"),
        ("app.example.com:65536", "the port is out of range: 'app.example.com:65536'"),
        ("*.com", "a wildcard needs at least two labels after '*.': '*.com'"),
        ("https://app.example.com", "not a host, *.suffix or host:port: 'https://app.example.com'"),
    ],
)
def test_a_bad_domain_entry_is_refused_with_the_reason(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_domain_entry(entry)


def test_an_invalid_domain_entry_does_not_hide_the_valid_ones_after_it() -> None:
    url = "https://app.example.com/x"
    domains = ["*", "app.example.com:0", "app.example.com"]
    assert safe_return_url(url, protected_domains=domains, default=DEFAULT) == url


# --- header middleware -------------------------------------------------------------------------


def _sent(scope: Scope, start: Message) -> list[Message]:
    """What the middleware sends when the app behind it answers with `start`."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(dict(start))

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request"}

    asyncio.run(SecurityHeadersMiddleware(app, https=False)(scope, receive, send))
    return sent


CSP = (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())


def test_a_response_start_without_headers_gets_the_security_headers() -> None:
    [message] = _sent({"type": "http", "path": "/login"},
                      {"type": "http.response.start", "status": 200})
    expected = [(name.lower().encode(), value.encode())
                for name, value in security_headers(https=False)]
    assert message["headers"] == expected and CSP in expected


def test_an_http_scope_without_a_path_is_a_portal_page() -> None:
    [message] = _sent({"type": "http"},
                      {"type": "http.response.start", "status": 200, "headers": []})
    assert CSP in message["headers"]
