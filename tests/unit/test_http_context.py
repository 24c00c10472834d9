"""adapters/http_context: which client address to believe, absolute URLs, browser or API."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from stepguard.adapters.http_context import (
    TrustedProxies,
    is_identity_header,
    split_url,
    wants_html,
)
from stepguard.core.errors import BadRequest

PROXIES = TrustedProxies.parse(["10.0.0.0/8", "2001:db8::/32"])


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    ("203.0.113.1", "198.51.100.7", "203.0.113.1"),  # not a proxy: its header is ignored
    ("10.0.0.1", None, "10.0.0.1"),
    ("10.0.0.1", "198.51.100.7", "198.51.100.7"),
    ("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.2", "198.51.100.7"),  # rightmost untrusted
    ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.1"),  # only proxies: the peer
    ("10.0.0.1", "not-an-ip", "10.0.0.1"),  # garbage is never taken as an address
    ("10.0.0.1", " , ", "10.0.0.1"),
    ("2001:db8::1", "2001:db9::5", "2001:db9::5"),
    ("not-an-ip", "198.51.100.7", "not-an-ip"),
])
def test_client_ip(peer: str, forwarded: str | None, expected: str) -> None:
    assert PROXIES.client_ip(peer, forwarded) == expected


def test_nothing_is_trusted_by_default() -> None:
    assert TrustedProxies.parse([]).client_ip("10.0.0.1", "198.51.100.7") == "10.0.0.1"


@pytest.mark.parametrize("name", ["Remote-User", "REMOTE_USER", "remote_groups", "Stepguard-Acr"])
def test_identity_headers_in_any_spelling(name: str) -> None:
    assert is_identity_header(name)
    assert not is_identity_header("X-Remote-User")


def test_split_url() -> None:
    assert split_url("https://app.test:8443/a/b?x=1") == ("https", "app.test:8443", "/a/b?x=1")
    assert split_url("http://app.test") == ("http", "app.test", "/")


@pytest.mark.parametrize("url", ["/relative", "ftp://app.test/", "https://u:p@app.test/",
                                 "https:///nohost", "javascript:alert(1)"])
def test_split_url_refuses_what_is_not_a_plain_absolute_http_url(url: str) -> None:
    with pytest.raises(BadRequest):
        split_url(url)


@pytest.mark.parametrize(("headers", "html"), [
    ({"accept": "text/html,application/xhtml+xml"}, True),
    ({"accept": "application/json"}, False),
    ({}, False),
    ({"accept": "text/html", "x-requested-with": "XMLHttpRequest"}, False),
    ({"accept": "text/html", "authorization": "Bearer abc"}, False),
    ({"accept": "text/html", "authorization": "Basic abc"}, True),
])
def test_wants_html(headers: dict[str, str], html: bool) -> None:
    assert wants_html(Headers(headers)) is html
