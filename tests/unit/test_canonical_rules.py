"""Canonical reading, pinned at its edges: the exact 400 each refusal gives (the reason reaches
the client and the logs), where an absolute URL's authority ends, the host-length and port
boundaries, the full token alphabet of a method, and the field and JSON readings."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest

from stepguard.core.canonical import (
    _TOKEN,
    canonical_host,
    canonical_method,
    canonical_path,
    field_key,
    loads_json,
    split_target,
    split_url,
    wire_host,
)
from stepguard.core.errors import BadRequest

_ASCII_ONLY = "must be printable ASCII without spaces (percent-encode the rest)"
_USER_INFO = "expected an absolute http(s) URL without user information"


@pytest.mark.parametrize(
    ("read", "raw", "message"),
    [
        (split_target, "admin", "request target must start with '/'"),
        (split_target, "/a#b", "request target must not contain '#'"),
        (split_target, "/a b", f"request target {_ASCII_ONLY}"),
        (split_url, "http://h/x#y", "URL must not contain '#'"),
        (split_url, "http://h /x", f"URL {_ASCII_ONLY}"),
        (split_url, "/x", "expected an absolute http(s) URL"),
        (split_url, "http://u@h/x", _USER_INFO),
        (split_url, "http:///x", _USER_INFO),  # an empty authority is refused as such
        (split_url, "http://?x", _USER_INFO),
        (canonical_path, "a/b", "path must start with '/'"),
        (canonical_path, "/a;b", "path must not contain ';'"),
        (canonical_path, "/a\\b", "path must not contain '\\\\'"),
        (canonical_path, "/a\x00", "path must not contain control characters"),
        (canonical_path, "/a%00", "path must not contain control characters"),
        (canonical_path, "/a%2fb", "path must not contain '/', encoded or not"),
        (canonical_path, "/a//../b", "ambiguous path: '..' after an empty segment"),
        (canonical_path, "/%2e%2e/admin", "encoded dot segment in path"),
        (canonical_path, "/%2541dmin", "double-encoded path"),
        (canonical_path, "/%zz", "malformed percent-escape in path"),
        (canonical_path, "/%e9", "path is not valid UTF-8"),
        (canonical_path, "/a\ud800", "path is not valid UTF-8"),
        (canonical_path, "/../admin", "path goes above the root"),
        (canonical_host, "app\x00.example", "host must not contain control characters"),
        (canonical_host, "", "host name is empty or too long"),
        (canonical_host, "-app.example", "invalid host name"),
        (canonical_host, "[::1", "invalid IPv6 host"),
        (canonical_host, "[not-an-ip]", "invalid IPv6 host"),
        (canonical_host, "[fe80::1%eth0]", "invalid IPv6 host"),
        (canonical_host, "[::1]:80]", "invalid port in host"),  # the first `]` ends the literal
        (canonical_host, "app.example:99999", "invalid port in host"),
        (canonical_host, "xn--a.example\u200b", "invalid international host name"),
        (wire_host, "caf\u00e9.example", "host must be printable ASCII"),
        (canonical_method, "GE T", "invalid request method"),
        (loads_json, b'{"a": NaN}', "NaN is not JSON"),
        (loads_json, b"[-Infinity]", "-Infinity is not JSON"),
    ],
)
def test_each_refusal_gives_its_exact_reason(
    read: Callable[[Any], object], raw: str | bytes, message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        read(raw)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://h?a?b", ("/", "a?b")),  # the authority ends at the first `?`
        ("http:///x", ("/x", "")),  # ... or at a `/` right after `://`
        ("http://?q", ("/", "q")),
        ("http://h/x://y", ("/x://y", "")),  # the scheme ends at the first `://`
    ],
)
def test_absolute_target_authority_ends_at_the_first_slash_or_question_mark(
    target: str, expected: tuple[str, str]
) -> None:
    assert split_target(target) == expected


def test_url_scheme_ends_at_the_first_separator() -> None:
    assert split_url("http://h/x://y") == ("http", "h", "/x://y")


def test_host_name_of_exactly_254_characters_is_too_long() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 62])
    assert len(name) == 254
    with pytest.raises(BadRequest, match="^host name is empty or too long$"):
        canonical_host(name)


@pytest.mark.parametrize("port", ["0", "65535", ""])
def test_ports_up_to_65535_are_accepted(port: str) -> None:
    assert canonical_host(f"app.example:{port}") == "app.example"
    assert canonical_host(f"[::1]:{port}") == "[::1]"


def test_port_65536_is_refused() -> None:
    with pytest.raises(BadRequest, match="^invalid port in host$"):
        canonical_host("app.example:65536")


def test_method_may_use_every_token_character_at_once() -> None:
    method = "".join(sorted(_TOKEN))
    assert canonical_method(method) == method.upper()


def test_international_host_is_encoded_without_deprecation_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert canonical_host("fa\u00df.de") == "xn--fa-hia.de"


def test_field_key_drops_only_leading_spaces_as_php_does() -> None:
    assert field_key(" \tamount") == "\tamount"
    assert field_key("\namount") == "\namount"
