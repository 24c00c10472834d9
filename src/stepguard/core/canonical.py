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
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote_plus

import idna

from stepguard.core.errors import BadRequest

__all__ = ["canonical_host", "canonical_method", "canonical_path", "field_key", "form_pairs",
           "loads_json", "single_values", "split_target", "split_url", "wire_host"]

_ABSOLUTE = re.compile(r"(?i)https?://")
# A request target is printable ASCII without space or `#` (RFC 9112 §3.2, RFC 3986 §3.5):
# browsers encode everything else, and proxies and frameworks read those bytes differently.
_TARGET = re.compile(r"[!-~]*")
_BRACKETS = re.compile(r"\[.*", re.DOTALL)
_FIELD_SEPARATORS = re.compile(r"[&;]")
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

    `http(s)://host/x?y` gives `("/x", "y")`; an empty path is `/`. Refused with `BadRequest`:
    anything else (`*`, `evil.com/x`, `javascript:…`), a `#` (no browser sends a fragment; nginx
    passes it on raw and Go's net/http keeps it in the path, so `/public#/../vault` would be
    routed to `/vault`), spaces, controls and any byte outside printable ASCII.
    """
    _check_target(target, "request target")
    if _ABSOLUTE.match(target):
        target = _split_authority(target)[2]
    elif not target.startswith("/"):
        raise BadRequest("request target must start with '/'")
    path, _, query = target.partition("?")
    return path or "/", query


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, authority, target) of an absolute http(s) URL such as nginx's X-Original-URL.

    The same rules as `split_target`; also refused: an empty authority or one with user
    information (`@`) or a malformed IPv6 literal (`http://[::1`).
    """
    _check_target(url, "URL")
    if not _ABSOLUTE.match(url):
        raise BadRequest("expected an absolute http(s) URL")
    scheme, authority, target = _split_authority(url)
    if not authority or "@" in authority:
        raise BadRequest("expected an absolute http(s) URL without user information")
    wire_host(authority)
    return scheme, authority, target


def _check_target(target: str, what: str) -> None:
    if "#" in target:
        raise BadRequest(f"{what} must not contain '#'")
    if not _TARGET.fullmatch(target):
        raise BadRequest(f"{what} must be printable ASCII without spaces (percent-encode the rest)")


def _split_authority(url: str) -> tuple[str, str, str]:
    scheme, rest = url.split("://", 1)
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    target = rest[cut:]
    return scheme.lower(), rest[:cut], target if target.startswith("/") else "/" + target


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


def wire_host(raw: str) -> str:
    """`canonical_host` of a Host (or forwarded host) header as it came off the wire: raw bytes
    outside printable ASCII are refused (an international name travels as `xn--` labels), since
    servers decode them as latin-1, UTF-8 or not at all."""
    if not _TARGET.fullmatch(raw):
        raise BadRequest("host must be printable ASCII")
    return canonical_host(raw)


def is_token(text: str) -> bool:
    """An RFC 9110 token (a method, a header name): one or more `tchar`."""
    return bool(text) and set(text) <= _TOKEN


def canonical_method(raw: str) -> str:
    """An HTTP method as an uppercase RFC 9110 token; anything else raises `BadRequest`."""
    if not is_token(raw):
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


# --- fields: one reading of a query, a form or a JSON body, or a 400 -------------------------


def field_key(name: str) -> str:
    """The one name every framework reads a form, query or JSON field under.

    Case-folded (ASP.NET binds case-insensitively, Go's encoding/json folds keys, even the
    Kelvin sign to `k`), cut at `[` (Rails and PHP read `amount[]` and `amount[x]` as `amount`),
    `.` and space as `_` (PHP), after PHP's own first steps: the name ends at a NUL and its
    leading spaces are dropped (`$_POST` reads ` amount` and `amount%00x` as `amount`). Two
    fields with the same key are one field given twice.
    """
    name = name.partition("\0")[0].lstrip(" ")
    return _BRACKETS.sub("", name).replace(".", "_").replace(" ", "_").casefold()


def form_pairs(text: str) -> list[tuple[str, str]]:
    """`application/x-www-form-urlencoded` (or a query string) as (name, value) pairs, decoded
    once, blank values kept. Both `&` and `;` separate fields (older CGI and Rails read `;`)."""
    pairs = []
    for part in _FIELD_SEPARATORS.split(text):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs


def single_values(pairs: Iterable[tuple[str, str]], names: Iterable[str]) -> dict[str, str]:
    """The value of each wanted field that is present; `BadRequest` when one is given more than
    once under any spelling `field_key` folds together (frameworks pick the first, the last or
    all of them: never guess which one the application will read)."""
    wanted = {field_key(name): name for name in names}
    found: dict[str, str] = {}
    for name, value in pairs:
        key = field_key(name)
        if key not in wanted:
            continue
        if wanted[key] in found:
            raise BadRequest(f"the field {wanted[key]!r} is given more than once")
        found[wanted[key]] = value
    return found


def loads_json(body: bytes | str) -> Any:
    """A JSON document whose objects have unique keys at every level (compared case-folded);
    `BadRequest` for duplicates, `NaN`/`Infinity`, invalid UTF-8, too deep nesting or bad JSON."""
    try:
        return json.loads(body, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None


def _unique_object(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        folded = key.casefold()
        if folded in seen:
            raise BadRequest(f"the JSON key {key[:64]!r} is given more than once")
        seen.add(folded)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not JSON")
