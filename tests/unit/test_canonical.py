"""Canonical paths, hosts and methods: every path trick gets its canonical path or a 400."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepguard.core.canonical import (
    canonical_host,
    canonical_method,
    canonical_path,
    split_target,
    split_url,
)
from stepguard.core.errors import BadRequest

# --- split_target ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", ("/", "")),
        ("/a/b?x=1&y=2", ("/a/b", "x=1&y=2")),
        ("/a?b?c", ("/a", "b?c")),
        ("http://app.example.com/x?y", ("/x", "y")),
        ("HTTPS://app.example.com", ("/", "")),
        ("https://app.example.com?q=1", ("/", "q=1")),
        ("https://user@evil.example/admin", ("/admin", "")),
        ("//evil.example/x", ("//evil.example/x", "")),
        ("/a%2Fb?%2F", ("/a%2Fb", "%2F")),
    ],
)
def test_split_target(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize(
    "target",
    ["", "*", "admin", "evil.com/x", "javascript:alert(1)", "ftp://h/x", "/a\x00b", "/a?\r\nX: 1",
     # Issue 9 item 2: a fragment in a request target is never sent by a browser; nginx passes
     # it on raw and Go's net/http keeps it in the path (then path.Clean resolves `..` past it).
     "/a#frag", "/a?q#frag?not-query", "/public/x#/../../vault/keys", "/public#", "http://h/a#b",
     # Bytes outside printable ASCII: browsers percent-encode them; proxies pass them raw and
     # each framework decodes them its own way (latin-1, UTF-8, replacement characters).
     "/caf\u00e9", "/a\u00ff", "/a b", "/a\tb", "/a?x=\u00e9", "/a\x7f", "/a?\x0b"],
)
def test_split_target_refuses(target: str) -> None:
    with pytest.raises(BadRequest):
        split_target(target)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://app.test/x?y=1", ("http", "app.test", "/x?y=1")),
        ("HTTPS://App.Test:8443", ("https", "App.Test:8443", "/")),
        ("https://app.test?q", ("https", "app.test", "/?q")),
        ("http://[::1]:80/a", ("http", "[::1]:80", "/a")),
    ],
)
def test_split_url(url: str, expected: tuple[str, str, str]) -> None:
    assert split_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["", "/x", "ftp://h/x", "http://", "http:///x", "http://u@h/x", "http://h/x#y",
     "http://[::1", "http://[::1/x", "http://h\t/x", "http://h /x", "http://h\u00e9/x",
     "http://h/\u00ff", "javascript://h/x"],
)
def test_split_url_refuses(url: str) -> None:
    """Issue 9 item 12: a malformed X-Original-URL is a 400, never an exception (500)."""
    with pytest.raises(BadRequest):
        split_url(url)


# --- canonical_path: accepted spellings -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/admin", "/admin"),
        ("/admin/", "/admin/"),
        ("/Admin/Users", "/Admin/Users"),  # case kept; matching is case-insensitive elsewhere
        ("//admin", "/admin"),
        ("/admin//users///x", "/admin/users/x"),
        ("/admin//", "/admin/"),
        ("/./admin", "/admin"),
        ("/public/../admin", "/admin"),
        ("/public/./../admin/.", "/admin/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../", "/a/"),
        ("/a/..", "/"),
        ("/a/%41dmin", "/a/Admin"),
        ("/%61dmin", "/admin"),
        ("/caf%C3%A9", "/café"),
        ("/caf%c3%a9", "/café"),
        ("/café", "/café"),
        ("/a%20b", "/a b"),
        ("/100%25", "/100%25"),  # `%`, `?`, `#` stay encoded so the result is a raw path too
        ("/%25zz", "/%25zz"),
        ("/a%3fb%23c", "/a%3Fb%23c"),
        ("/...", "/..."),
        ("/.well-known/x", "/.well-known/x"),
        ("/a.%2e", "/a.."),  # a name ending in dots is not a dot segment
        ("/%2ehtaccess", "/.htaccess"),
        ("/~user/a+b:c@d!$&'()*,=", "/~user/a+b:c@d!$&'()*,="),
    ],
)
def test_canonical_path(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected


# --- canonical_path: refused tricks ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/../admin",
        "/a/../../admin",
        "/%2e%2e/admin",
        "/%2E%2E/admin",
        "/public/%2e%2e/admin",
        "/public/.%2e/admin",
        "/public/%2e./admin",
        "/public/%2e/admin",
        "/admin%2fusers",
        "/admin%2Fusers",
        "/public%2f..%2fadmin",
        "/admin%5cusers",
        "/admin%5Cusers",
        "/admin\\users",
        "/\\evil.example",
        "/admin%00.html",
        "/admin\x00",
        "/admin%0d%0aSet-Cookie:x",
        "/admin\t",
        "/admin%7f",
        "/admin;jsessionid=1",
        "/admin;x=1/users",
        "/admin%3bx=1",
        "/%252e%252e/admin",
        "/admin%252fusers",
        "/%2541dmin",
        "/%zz",
        "/a%2",
        "/a%",
        "/%e9",  # Latin-1, not UTF-8
        "/%c0%ae%c0%ae/admin",  # overlong UTF-8 dots
        "/%c0%af",  # overlong UTF-8 slash
        "/%ed%a0%80",  # encoded surrogate
        "/a\ud800",  # lone surrogate in the text itself
        "/a//../admin",  # merge-slashes says /admin, RFC 3986 says /a/admin: ambiguous
        "//..",
        "/a?b",  # query must be split off first
        "/a#b",
        "admin",
        "a/b",
    ],
)
def test_canonical_path_refuses(raw: str) -> None:
    with pytest.raises(BadRequest):
        canonical_path(raw)


def test_refusal_message_is_short_and_plain() -> None:
    with pytest.raises(BadRequest) as caught:
        canonical_path("/a%2fb")
    message = str(caught.value)
    assert "/" in message and len(message) < 80 and "\n" not in message


# --- canonical_path: properties -------------------------------------------------------------

_SEGMENT_CHARS = st.sampled_from(list("abcXYZ019-._~!$&'()*+,=:@%/;\\ é\x00"))
_RAW = st.lists(
    st.text(_SEGMENT_CHARS, max_size=6) | st.sampled_from([".", "..", "%2e", "%2E%2e", "%25", ""]),
    max_size=8,
).map(lambda parts: "/" + "/".join(parts))
_PLAIN_SEGMENT = st.text(
    st.characters(codec="utf-8", exclude_characters="/\\;%?#", exclude_categories=["Cc", "Cs"]),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))


def _refused_or(raw: str) -> str | None:
    try:
        return canonical_path(raw)
    except BadRequest:
        return None


@given(_RAW)
def test_canonical_path_is_idempotent(raw: str) -> None:
    once = _refused_or(raw)
    if once is not None:
        assert canonical_path(once) == once


@given(_RAW)
def test_canonical_path_output_is_clean(raw: str) -> None:
    path = _refused_or(raw)
    if path is None:
        return
    assert path.startswith("/")
    assert "//" not in path
    for bad in ("\\", "\x00", ";"):
        assert bad not in path
    assert not set(path.split("/")) & {".", ".."}


def _encode(segment: str, choices: list[int]) -> str:
    """Percent-encode some UTF-8 bytes of `segment` (upper or lower hex), leave others literal."""
    out = []
    for index, char in enumerate(segment):
        mode = choices[index % len(choices)] if choices else 0
        if mode == 0:
            out.append(char)
        else:
            hexes = [f"%{byte:02X}" for byte in char.encode("utf-8")]
            out.append("".join(h.lower() if mode == 2 else h for h in hexes))
    return "".join(out)


@given(
    st.lists(_PLAIN_SEGMENT, min_size=1, max_size=6),
    st.lists(st.integers(0, 2), max_size=10),
    st.booleans(),
)
def test_encoded_spelling_of_plain_segments_is_the_same_path(
    segments: list[str], choices: list[int], trailing: bool
) -> None:
    plain = "/" + "/".join(segments) + ("/" if trailing else "")
    encoded = "/" + "/".join(_encode(s, choices) for s in segments) + ("/" if trailing else "")
    assert canonical_path(encoded) == canonical_path(plain)


@given(_RAW, st.lists(st.integers(0, 2), max_size=10))
def test_any_encoding_is_the_same_path_or_refused(raw: str, choices: list[int]) -> None:
    expected = _refused_or(raw)
    if expected is None:
        return
    encoded = "/" + _encode(raw[1:], choices)
    assert _refused_or(encoded) in (None, expected)


@given(
    st.lists(_PLAIN_SEGMENT, min_size=1, max_size=5),
    st.lists(st.sampled_from(["%2e", "%2E", ".%2e", "%2e.", "%2e%2e", "%2f", "%5c", "%00", "%3b"])),
)
def test_encoded_tricks_are_always_refused(segments: list[str], tricks: list[str]) -> None:
    for trick in tricks:
        with pytest.raises(BadRequest):
            canonical_path("/" + "/".join([*segments, trick, "admin"]))


@given(st.lists(_PLAIN_SEGMENT, min_size=1, max_size=6), st.integers(0, 5))
def test_literal_dot_segments_resolve_like_rfc_3986(segments: list[str], up: int) -> None:
    up = min(up, len(segments))
    raw = "/" + "/".join([*segments, *([".."] * up), "x"])
    kept = [s for s in segments[: len(segments) - up]]
    assert canonical_path(raw) == "/" + "/".join([*kept, "x"])


@given(st.lists(st.sampled_from(["a", "b", "", ".", ".."]), max_size=8))
def test_merge_slashes_and_rfc_3986_servers_agree_with_the_result(segments: list[str]) -> None:
    """Whether a server merges `//` before or after resolving dots, it reaches our path."""
    raw = "/a/" + "/".join(segments)
    path = _refused_or(raw)
    if path is None:
        return
    rfc_first = re.sub("/+", "/", urlsplit(urljoin("http://h/", raw)).path)
    merge_first = urlsplit(urljoin("http://h/", re.sub("/+", "/", raw))).path
    assert path == rfc_first == merge_first


# --- canonical_host -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("app.example.com", "app.example.com"),
        ("APP.Example.COM", "app.example.com"),
        ("app.example.com.", "app.example.com"),
        ("app.example.com:8443", "app.example.com"),
        ("app.example.com.:443", "app.example.com"),
        ("app.example.com:", "app.example.com"),
        ("localhost", "localhost"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::1]:443", "[::1]"),
        ("[2001:DB8:0:0::0001]:8443", "[2001:db8::1]"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008 / UTS 46 non-transitional, as browsers do
        ("ａｐｐ．example.com", "app.example.com"),  # full-width letters and dot map to ASCII
        ("_acme.example.com", "_acme.example.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_canonical_host(raw: str, expected: str) -> None:
    assert canonical_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        ":443",
        "app.example.com..",
        "app..example.com",
        ".app.example.com",
        "app example.com",
        " app.example.com",
        "user@app.example.com",
        "app.example.com/x",
        "app.example.com\\x",
        "app.example.com\x00",
        "app.example.com\r\n",
        "app.example.com:https",
        "app.example.com:99999",
        "app.example.com:1:2",
        "-app.example.com",
        "app-.example.com",
        "a" * 64 + ".com",
        ".".join(["a" * 50] * 5) + ".com",  # 259 characters
        "::1",
        "[::1",
        "[::1]x",
        "[::1]:x",
        "[not-an-ip]",
        "[fe80::1%eth0]",
        "xn--a.example\u200b",  # zero-width space is not a valid IDNA label
        "app%2eexample.com",
    ],
)
def test_canonical_host_refuses(raw: str) -> None:
    with pytest.raises(BadRequest):
        canonical_host(raw)


def test_canonical_host_limits_total_length() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters: the longest allowed
    assert canonical_host(name + ".") == name
    with pytest.raises(BadRequest):
        canonical_host("c" + name)


@given(st.text(st.sampled_from(list("abcAB-.:[]1@ é/")), max_size=20))
def test_canonical_host_is_idempotent(raw: str) -> None:
    try:
        host = canonical_host(raw)
    except BadRequest:
        return
    assert canonical_host(host) == host
    assert host == host.lower() and not host.endswith(".")


# --- canonical_method -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("GET", "GET"), ("post", "POST"), ("Delete", "DELETE"), ("M-SEARCH", "M-SEARCH")],
)
def test_canonical_method(raw: str, expected: str) -> None:
    assert canonical_method(raw) == expected


@pytest.mark.parametrize("raw", ["", "GE T", "GET\r\n", "PO/ST", "GET:", "(GET)", "GÉT"])
def test_canonical_method_refuses(raw: str) -> None:
    with pytest.raises(BadRequest):
        canonical_method(raw)
