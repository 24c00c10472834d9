"""Build a `RequestContext` from HTTP facts; forwarded headers count only from trusted proxies."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, overload

from starlette.datastructures import Headers

from stepguard.adapters.memo import Memo
from stepguard.core.canonical import (
    canonical_method,
    canonical_path,
    field_key,
    form_pairs,
    loads_json,
    single_values,
    split_target,
    split_url,
    wire_host,
)
from stepguard.core.context import RequestContext
from stepguard.core.errors import BadRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

IDENTITY_HEADERS = ("remote-user", "remote-groups", "remote-email", "remote-name",
                    "stepguard-acr", "stepguard-amr")
# Headers that Rails (Rack::MethodOverride), Laravel/Symfony, Express method-override and ASP.NET
# read as "execute this POST as another method"; `_method` is the form field they read.
OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
OVERRIDE_FIELD = "_method"

_MULTIPART_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?\bname="([^"]*)"')

__all__ = ["IDENTITY_HEADERS", "OVERRIDE_HEADERS", "Body", "HeaderView", "RequestHeaders",
           "TrustedProxies", "build_context", "effective_method", "has_override",
           "is_identity_header", "is_override_header", "read_body", "route_attributes",
           "canonical_path_of", "split_url", "wants_html"]


class RequestHeaders:
    """Raw ASGI headers read once: `get` gives a lower-case name's first value (as Starlette's
    `Headers.get`), `items()` every pair in order — decoded as latin-1, as ASGI servers do."""

    __slots__ = ("_first", "_pairs")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        first: dict[str, str] = {}
        for name, value in reversed(pairs):
            first[name] = value
        self._pairs, self._first = pairs, first

    @overload
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: str) -> str: ...

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._first.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._first

    def items(self) -> list[tuple[str, str]]:
        return self._pairs

    def getlist(self, key: str) -> list[str]:
        return [value for name, value in self._pairs if name == key]


# What the context builders read of a request's headers: `get` of a lower-case name, `items()`.
HeaderView = Headers | RequestHeaders


class TrustedProxies:
    """The configured proxy networks, and the client address they vouch for.

    Both answers are memoised (bounded): a gateway sees the same few proxy peers and, per
    client, the same `X-Forwarded-For` on every request, and parsing addresses with `ipaddress`
    was the costliest step of reading a request. The answers depend only on their inputs (the
    networks are fixed per instance), so a remembered answer is the answer."""

    def __init__(self, networks: Iterable[Network], *, size: int = 4096) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)
        self._trusted: Memo[str, bool] = Memo(size)
        self._clients: Memo[tuple[str, str], str | BadRequest] = Memo(size)

    @classmethod
    def parse(cls, cidrs: Sequence[str]) -> TrustedProxies:
        return cls(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def trusts(self, ip: str) -> bool:
        known = self._trusted.get(ip)
        if known is None:
            known = self._trusts(ip)
            if len(ip) <= _MEMO_TEXT:
                self._trusted.put(ip, known)
        return known

    def _trusts(self, ip: str) -> bool:
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
        key = (peer, forwarded_for)
        known = self._clients.get(key)
        if known is None:
            try:
                known = self._client_ip(peer, forwarded_for)
            except BadRequest as refused:
                known = refused
            if len(forwarded_for) <= _MEMO_TEXT:
                self._clients.put(key, known)
        if isinstance(known, BadRequest):
            raise BadRequest(str(known))
        return known

    def _client_ip(self, peer: str, forwarded_for: str) -> str:
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip(" \t")
            if not _is_ip(hop):
                raise BadRequest("X-Forwarded-For from a trusted proxy is not a list of addresses")
            if not self.trusts(hop):
                return hop
        return peer


_MEMO_TEXT = 512  # characters: longer peers or X-Forwarded-For values are parsed, not remembered


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=2048)
def is_identity_header(name: str) -> bool:
    """Client-sent identity headers in any case, with `_` for `-` (SECURITY.md case 2)."""
    return name.lower().replace("_", "-") in IDENTITY_HEADERS


def build_context(*, method: str, scheme: str, host: str, target: str, client_ip: str,
                  headers: HeaderView, device_id: str = "", honour_overrides: bool = False,
                  body: Body | None = None) -> RequestContext:
    """Canonical context from the original request's parts (BadRequest if ambiguous).

    The method is the one the application will execute (`effective_method`); `body` is None
    where the door cannot see the body (forward-auth)."""
    raw_path, query = split_target(target or "/")
    method = effective_method(method, headers=headers.items(), query=query,
                              body=body.fields if body else None, honour=honour_overrides)
    return RequestContext(
        method=method, host=_wire_host(host),
        path=_canonical_path(raw_path), scheme="https" if scheme == "https" else "http",
        query=query, client_ip=client_ip, user_agent=headers.get("user-agent", "")[:512],
        device_id=device_id)


# The same hosts, paths and header names come on every request: their (pure) readings are
# memoised, bounded. A refusal (BadRequest) is not remembered; it is raised again each time.
_wire_host = lru_cache(maxsize=4096)(wire_host)
_canonical_path = canonical_path_of = lru_cache(maxsize=8192)(canonical_path)


@lru_cache(maxsize=2048)
def is_override_header(name: str) -> bool:
    """A method-override header in any case, with `_` for `-` (WSGI and Rack read both alike)."""
    return name.lower().replace("_", "-") in OVERRIDE_HEADERS


def has_override(headers: Iterable[tuple[str, str]], query: str) -> bool:
    """Whether the request carries a method override Stepguard can see (header or query)."""
    return any(is_override_header(name) for name, _ in headers) or any(
        field_key(name) == OVERRIDE_FIELD for name, _ in form_pairs(query))


def effective_method(method: str, *, headers: Iterable[tuple[str, str]], query: str,
                     body: Sequence[tuple[str, str]] | None, honour: bool) -> str:
    """The method the application will execute (issue 9 item 6), or `BadRequest`.

    Without an override it is the request's method. An override (an `OVERRIDE_HEADERS` header
    or a `_method` form field in `body`, when the door can see the body) is refused unless
    `honour` is set; when honoured it must be on a POST (the only method frameworks override),
    given once, and agree with every other override (Rails prefers the body, Symfony the
    header). A `_method` in the query is always refused: Rails ignores it, Symfony obeys it.
    """
    if any(field_key(name) == OVERRIDE_FIELD for name, _ in form_pairs(query)):
        raise BadRequest("a '_method' in the query is refused: send the real method")
    values = [value for name, value in headers if is_override_header(name)]
    values += [value for name, value in body or () if field_key(name) == OVERRIDE_FIELD]
    if not values:
        return canonical_method(method)
    if not honour:
        raise BadRequest("method overrides (X-HTTP-Method-Override, _method) are refused: "
                         "send the real method")
    if canonical_method(method) != "POST" or len(values) != 1:
        raise BadRequest("ambiguous method override: give one, on a POST")
    return canonical_method(values[0].strip())


@dataclass(frozen=True)
class Body:
    """A request body read once, the way frameworks read it: `fields` are its top-level
    (name, value) pairs whatever the format (values of multipart or non-string JSON fields are
    ""), `form` the urlencoded pairs, `document` the JSON document (unique keys at every level)."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    form: list[tuple[str, str]] = field(default_factory=list)
    document: Any = None


def read_body(body: bytes, content_type: str) -> Body:
    """The fields of a urlencoded, JSON or multipart body; other media types have none.
    A JSON body that is malformed or repeats a key raises `BadRequest` (never a guess)."""
    media = content_type.split(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        pairs = form_pairs(body.decode("utf-8", "replace"))
        return Body(pairs, pairs)
    if media == "application/json" or media.endswith("+json"):
        document = loads_json(body) if body.strip() else None
        top = document.items() if isinstance(document, dict) else ()
        return Body([(k, v if isinstance(v, str) else "") for k, v in top], [], document)
    if media.startswith("multipart/"):
        names = _MULTIPART_NAME.findall(body)
        return Body([(name.decode("utf-8", "replace"), "") for name in names])
    return Body()


def route_attributes(specs: Mapping[str, str], query: str, body: Body) -> dict[str, Any]:
    """Attributes named by `attribute -> query:name | form:name | json:a.b` specs.

    A field that feeds an attribute must appear once in the whole request: twice in one place,
    or once in the query and once in the body (Rails lets the query win, PHP's `$_REQUEST` the
    body), is `BadRequest` — issue 9 item 7."""
    query_pairs = form_pairs(query)
    found: dict[str, Any] = {}
    for name, spec in specs.items():
        kind, _, key = spec.partition(":")
        single_values([*query_pairs, *body.fields], [key.split(".")[0]])
        if kind == "json":
            value = _dig(body.document, key)
        else:
            value = single_values(query_pairs if kind == "query" else body.form, [key]).get(key)
        if value is not None:
            found[name] = value
    return found


def _dig(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def wants_html(headers: HeaderView) -> bool:
    """A browser navigation (redirect it) rather than an API client or XHR (401 RFC 9470)."""
    if headers.get("x-requested-with", "").lower() == "xmlhttprequest":
        return False
    if headers.get("authorization", "").lower().startswith("bearer "):
        return False
    return "text/html" in headers.get("accept", "")
