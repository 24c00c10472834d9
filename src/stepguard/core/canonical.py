"""Canonical request paths, hosts and methods (pure): one spelling per resource, or a 400.

Policy rules match the canonical form only, so every trick that lets one resource be spelled
two ways (`/../`, `%2e%2e`, `%2F`, `%5c`, `%00`, `;`, `//`, `/./`, a trailing dot in the host)
either yields the canonical path of the resource the upstream will serve, or raises
`BadRequest`. Anything a backend might read differently from us is refused rather than guessed.

Case is kept: paths are case-sensitive on the wire, and rule matching compares paths and hosts
case-insensitively (so `/ADMIN` can never slip past a rule written for `/admin`).
"""

from __future__ import annotations

import ipaddress
import re

import idna

from stepguard.core.errors import BadRequest

__all__ = ["canonical_host", "canonical_method", "canonical_path", "split_target"]

_ABSOLUTE = re.compile(r"(?i)https?://")
# A path that needs no work: plain segments (no escapes, no dot segments), no empty segment.
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~!$&'()*+,=:@-]+)*/?")
_HEX = frozenset("0123456789abcdefABCDEF")
_STILL_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{0,5}")
_DOT_SEGMENTS = frozenset({".", ".."})
_KEEP_ENCODED = str.maketrans({"%": "%25", "?": "%3F", "#": "%23"})


def split_target(target: str) -> tuple[str, str]:
    """Split a request-target (origin or absolute form) into (raw path, raw query).

    The fragment is dropped; `http(s)://host/x?y` gives `("/x", "y")`; an empty path is `/`.
    Anything else (`*`, `evil.com/x`, `javascript:…`) and control characters raise `BadRequest`.
    """
    _reject_controls(target, "request target")
    target = target.split("#", 1)[0]
    if _ABSOLUTE.match(target):
        rest = target.split("://", 1)[1]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        target = rest[cut:]
    elif not target.startswith("/"):
        raise BadRequest("request target must start with '/'")
    path, _, query = target.partition("?")
    return path or "/", query


def canonical_path(raw: str) -> str:
    """Decode a raw path exactly once and resolve it to its one canonical spelling.

    Refused with `BadRequest`: encoded `/` or `\\`, literal `\\`, NUL and other ASCII controls
    (literal or encoded), malformed escapes, invalid UTF-8, escapes left after decoding (double
    encoding), `;` (path parameters, literal or encoded), dot segments that appear only after
    decoding (`%2e`, `.%2e`), `..` above the root, and `..` right after `//` (merge-slashes and
    RFC 3986 servers would disagree on the result). Literal `.`/`..` are resolved per RFC 3986
    remove_dot_segments, repeated slashes are collapsed, a trailing slash is kept, case is kept.
    The result is decoded text, except that `%`, `?` and `#` stay encoded (`%25`, `%3F`, `%23`)
    so that the canonical path is itself a valid raw path with the same canonical form.
    A literal `?` or `#` is refused: `split_target` removes the query and fragment first.
    """
    if not raw:
        return "/"
    if not raw.startswith("/"):
        raise BadRequest("path must start with '/'")
    if _PLAIN_PATH.fullmatch(raw):
        return raw
    for char in ("\\", ";", "?", "#"):
        if char in raw:
            raise BadRequest(f"path must not contain {char!r}")
    _reject_controls(raw, "path")
    segments = [_segment(part) for part in raw[1:].split("/")]
    merged_first = _join(_resolve([s for s in segments[:-1] if s] + segments[-1:]))
    if merged_first != _join(_resolve(segments)):
        raise BadRequest("ambiguous path: '..' after an empty segment")
    return merged_first


def canonical_host(raw: str) -> str:
    """Lowercase host without port or one trailing dot; IDNA (UTS 46) for non-ASCII labels.

    IPv6 literals keep their brackets in compressed form (`[2001:db8::1]`). Refused with
    `BadRequest`: empty, spaces, `@`, `/`, `\\`, controls, bad ports, labels over 63 characters,
    names over 253 characters, and anything that is not a valid host name after IDNA encoding.
    """
    _reject_controls(raw, "host")
    if raw.startswith("["):
        return _ipv6_host(raw)
    name, colon, port = raw.partition(":")
    if colon:
        _check_port(port)
    name = name[:-1] if name.endswith(".") else name
    if not name.isascii():
        name = _idna(name)
    name = name.lower()
    if not name or len(name) > 253:
        raise BadRequest("host name is empty or too long")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise BadRequest("invalid host name")
    return name


def canonical_method(raw: str) -> str:
    """An HTTP method as an uppercase RFC 9110 token; anything else raises `BadRequest`."""
    if not raw or not set(raw) <= _TOKEN:
        raise BadRequest("invalid request method")
    return raw.upper()


def _reject_controls(text: str, what: str) -> None:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise BadRequest(f"{what} must not contain control characters")


def _segment(part: str) -> str:
    """A raw segment: literal dot segments stay as they are; anything else is decoded once."""
    if part in _DOT_SEGMENTS or ("%" not in part and part.isascii()):
        return part
    decoded = _decode(part)
    if decoded in _DOT_SEGMENTS:
        raise BadRequest("encoded dot segment in path")
    if _STILL_ENCODED.search(decoded):
        raise BadRequest("double-encoded path")
    for char in ("/", "\\", ";"):
        if char in decoded:
            raise BadRequest(f"path must not contain {char!r}, encoded or not")
    _reject_controls(decoded, "path")
    return decoded.translate(_KEEP_ENCODED)


def _decode(part: str) -> str:
    """Percent-decode one segment to UTF-8 text; malformed escapes or bytes raise."""
    data = bytearray()
    index = 0
    while index < len(part):
        char = part[index]
        if char == "%":
            digits = part[index + 1 : index + 3]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise BadRequest("malformed percent-escape in path")
            data.append(int(digits, 16))
            index += 3
        else:
            data += _utf8(char)
            index += 1
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8") from None


def _utf8(char: str) -> bytes:
    try:
        return char.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("path is not valid UTF-8") from None


def _resolve(segments: list[str]) -> list[str]:
    """RFC 3986 remove_dot_segments over segments; `..` above the root raises."""
    output: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "..":
            if not output:
                raise BadRequest("path goes above the root")
            output.pop()
        if segment in _DOT_SEGMENTS:
            if index == last:
                output.append("")
            continue
        output.append(segment)
    return output


def _join(segments: list[str]) -> str:
    """`/`-joined segments with empty ones collapsed; a trailing slash is kept."""
    names = [segment for segment in segments if segment]
    trailing = "/" if names and segments[-1] == "" else ""
    return "/" + "/".join(names) + trailing


def _ipv6_host(raw: str) -> str:
    literal, bracket, rest = raw[1:].partition("]")
    if not bracket or (rest and not rest.startswith(":")):
        raise BadRequest("invalid IPv6 host")
    if rest:
        _check_port(rest[1:])
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise BadRequest("invalid IPv6 host") from None
    if address.scope_id:
        raise BadRequest("invalid IPv6 host")
    return f"[{address.compressed}]"


def _check_port(port: str) -> None:
    """An empty port is allowed (RFC 3986 `host:`); otherwise 0-65535 in decimal digits."""
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        raise BadRequest("invalid port in host")


def _idna(name: str) -> str:
    try:
        return idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise BadRequest("invalid international host name") from None
