"""Reverse-proxy mode: Stepguard fronts an upstream app itself (`upstreams:` in the config).

Client-sent identity headers are stripped; the identity headers are added. Route attributes for
`when` and `bind` come from the query, form fields or JSON body (declared per route). A POST that
triggers a step-up is held server-side (bounded) and, once the user passes and confirms, replayed
— so form data is not lost. The replay is decided again, so a single-use grant is spent by it.
"""

from __future__ import annotations

import asyncio
import functools
import html
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from stepguard.adapters.cookies import DEVICE_COOKIE, DeviceCookies, SessionCookie, parse_cookies
from stepguard.adapters.forward_auth import IdentityHeaders
from stepguard.adapters.http_context import (
    Body,
    RequestHeaders,
    TrustedProxies,
    build_context,
    is_identity_header,
    is_override_header,
    read_body,
    route_attributes,
    split_url,
    wants_html,
)
from stepguard.adapters.memo import Memo
from stepguard.adapters.relay import Answer, Relay, UpstreamError
from stepguard.adapters.rfc9470 import step_up_response
from stepguard.config.schema import Upstream, UpstreamRoute
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.core.matching import path_matcher
from stepguard.service.guard import Check, Guard, with_attributes
from stepguard.service.runtime import Runtime, token_key
from stepguard.service.stepup import HeldRequest, HeldTooLarge, StepUp
from stepguard.storage.records import HELD_BODY_LIMIT, ChallengeRecord, SessionRecord
from stepguard.web.security import (
    HSTS,
    RELAYED,
    merge_headers,
    raw_headers,
    security_headers,
)

INSPECT_LIMIT = HELD_BODY_LIMIT * 16  # bytes of a body read to find a route's attributes
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",
}


# Set by Stepguard alone, like any proxy: a client's copies never reach the upstream (V4.1.3).
# X-Original-URL / X-Rewrite-URL are on the list because some frameworks route by them.
FORWARDING = frozenset({"forwarded", "x-real-ip", "x-original-url", "x-rewrite-url",
                        "x-original-method", "x-http-forwarded-for", "client-ip",
                        "true-client-ip", "x-client-ip", "x-cluster-client-ip"})


def _is_forwarding(name: str) -> bool:
    name = name.lower().replace("_", "-")
    return name in FORWARDING or name.startswith("x-forwarded-")


@dataclass(frozen=True)
class Hop:
    """Where a request came from, as this proxy tells the upstream: the client's address, the
    chain of addresses from it to the peer, and the scheme and host the client used."""

    client_ip: str
    chain: str
    proto: str
    host: str

    def headers(self) -> list[tuple[str, str]]:
        return [("x-forwarded-for", self.chain), ("x-real-ip", self.client_ip),
                ("x-forwarded-proto", self.proto), ("x-forwarded-host", self.host)]

    def raw(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers()]


@dataclass(frozen=True, slots=True)
class _Reading:
    """One request head as the proxy reads it (remembered per method, target, peer and raw
    headers)."""

    headers: RequestHeaders
    upstream: Upstream
    route: UpstreamRoute | None
    hop: Hop
    cookies: Mapping[str, str]
    context: RequestContext  # with the route's action and query attributes, before any body
    key: str | None  # the session token's hash
    target: str
    relayed: list[tuple[bytes, bytes]]  # to the upstream: the client's relayable headers,
    # its cookies minus Stepguard's, the forwarding headers (identity headers come per answer)
    inspects: bool  # the body must be read before deciding (`_inspects_body`)

    def with_body(self, proxy: ReverseProxy, scope: Scope, body: bytes) -> RequestContext:
        """The context again with the body read (a `_method` field, form or JSON attributes)."""
        fields = read_body(body, self.headers.get("content-type", ""))
        context = proxy._context(scope, self.headers, self.cookies, self.hop.client_ip, fields)
        return _with_route(context, self.route, fields)


# From the upstream's answer: hop-by-hop headers and the framing Stepguard sets itself.
RESPONSE_DROPPED = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"te",
                              b"trailers", b"transfer-encoding", b"upgrade", b"content-length"})


class ReverseProxy:
    """Reverse-proxy mode. The instance is the raw ASGI application of proxied HTTP requests
    (`stepguard.gateway` dispatches to it before Starlette's routing); `websocket` and `replay`
    are reached through Starlette."""

    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp, *, https: bool = False,
                 unavailable: Callable[[], object] | None = None) -> None:
        self.rt, self.guard, self.stepup = runtime, guard, stepup
        self.session_cookie = SessionCookie.of(runtime.config)
        self.devices = DeviceCookies(runtime.cookie_key)
        # No cookie jar (a proxy must not keep upstream cookies), no redirects followed.
        self.relay = Relay(timeout=runtime.config.server.request_timeout)
        self.upstreams = list(runtime.config.upstreams)
        self.proxies = TrustedProxies.parse(runtime.config.server.trusted_proxies)
        self.honour_overrides = runtime.config.server.method_override == "honour"
        # Stepguard's page headers on what it answers itself; on relayed answers, those the
        # upstream's `response_headers` name (and HSTS over https) when it did not set them.
        self.page_headers = raw_headers(security_headers(https=https))
        self.relayed_headers = {id(u): raw_headers(_with_hsts(u.response_headers, https))
                                for u in self.upstreams}
        self.unavailable = unavailable
        self._hosts: Memo[str, str | None] = Memo()
        self._readings: Memo[tuple[object, ...], _Reading] = Memo(4096)
        self._answers: Memo[tuple[object, ...], list[tuple[bytes, bytes]]] = Memo(256)
        self.identities = IdentityHeaders(runtime, keep_empty=False)
        # Stepguard's own cookies: never relayed to the application.
        self._ours = frozenset({*self.session_cookie.names, DEVICE_COOKIE, "stepguard_pre",
                                "stepguard_enrol"})

    def upstream_for(self, host: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.host in (host, "*")), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One proxied HTTP request: decided, then relayed (or refused / challenged)."""
        try:
            answer = await self.handle(scope, receive)
        except StoreUnavailable:
            if self.unavailable is not None:
                self.unavailable()
            answer = Response("Stepguard cannot reach its store; try again shortly.\n", 503,
                              headers={"Retry-After": "5", "Cache-Control": "no-store"})
        except BadRequest as exc:  # client input never causes a 500
            answer = Response(f"bad request: {exc}\n", 400, headers={"Cache-Control": "no-store"})
        if isinstance(answer, tuple):
            scope[RELAYED] = True  # the application's answer (reached through Starlette too)
            await self._send_relayed(send, *answer)
            return
        page_headers = self.page_headers

        async def with_page_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = merge_headers(message.get("headers", ()), page_headers)
            await send(message)

        await answer(scope, receive, with_page_headers)

    async def handle(self, scope: Scope,
                     receive: Receive) -> tuple[Answer, str, Upstream] | Response:
        """Decide, then relay: the upstream's answer (with the method), or Stepguard's own.
        The body is read (bounded) only when it must be inspected: for the route's attributes,
        for a method override a framework would read from it, or to hold it across a step-up;
        else it streams through."""
        reading = self.reading(scope)
        if isinstance(reading, Response):
            return reading
        context, body = reading.context, None
        if reading.inspects:
            body = await _bounded_body(receive, INSPECT_LIMIT)
            if body is None:
                return Response("request body too large\n", 413)
            try:
                context = reading.with_body(self, scope, body)
            except BadRequest as exc:
                return Response(f"bad request: {exc}\n", 400)
        try:
            check = await self._check(context, reading.key)
        except StoreUnavailable:
            return Response("the session store is unavailable\n", 503, headers={"Retry-After": "5"})
        if check.decision.outcome is Outcome.ALLOW:
            relayed = await self._relay(
                context.method,  # an honoured override is sent as the method (issue 9 item 6)
                reading.target, reading.relayed,
                body if body is not None else _body_stream(scope, receive, reading.headers),
                reading.upstream, self.identities.raw(check))
            return (relayed if isinstance(relayed, Response)
                    else (relayed, context.method, reading.upstream))
        if check.decision.outcome is Outcome.DENY:
            return Response(" ".join(check.decision.reasons) + "\n", 403)
        if body is None:
            body = await _bounded_body(receive, self.stepup.hold_limit)
            if body is None:
                return too_large_to_hold(self.stepup.hold_limit)
        request = Request(scope, receive)
        try:
            location = await self._begin(request, check, body)
        except HeldTooLarge as exc:
            return too_large_to_hold(exc.limit)
        return self._step_up_answer(request, check, location)

    def reading(self, scope: Scope) -> _Reading | Response:
        """What the request's head says (upstream, route, forwarding facts, context before any
        body, session key, the headers to relay): a pure function of its method, scheme,
        target, server address, peer and raw headers, so the same head is read once (bounded
        memo; a refusal is answered again each time, never remembered)."""
        client = scope.get("client")
        server = scope.get("server")  # the host when a request has no Host header
        key = (scope["method"], scope.get("scheme"), scope.get("raw_path"), scope["path"],
               scope.get("query_string"), client[0] if client else "",
               tuple(server) if server else None, *scope["headers"])
        try:
            found = self._readings.get(key)
        except TypeError:  # a server that gives headers as lists: read each time
            return self._read(scope)
        if found is not None:
            return found
        fresh = self._read(scope)
        if isinstance(fresh, _Reading):
            self._readings.put(key, fresh)
        return fresh

    def _read(self, scope: Scope) -> _Reading | Response:
        raw = scope["headers"]
        headers = RequestHeaders(raw)
        hostname = self.hostname(scope, headers)
        if hostname is None:  # a Host that is no URL authority (`[::1`): the client's error
            return Response("bad request: invalid Host header\n", 400)
        upstream = self.upstream_for(hostname)
        if upstream is None:
            return Response("no upstream for this host\n", 404)
        cookies = parse_cookies(raw)
        try:
            hop = self.hop(scope, headers)
            context = self._context(scope, headers, cookies, hop.client_ip)
            route = _route(upstream, context.path)
            routed = _with_route(context, route, Body())
        except BadRequest as exc:
            return Response(f"bad request: {exc}\n", 400)
        return _Reading(headers, upstream, route, hop, cookies, routed,
                        token_key(self.session_cookie.token(cookies)), _target(scope),
                        self._upstream_headers(raw, raw, hop),
                        _inspects_body(route, scope["method"], headers))

    def _upstream_headers(self, client: Iterable[tuple[bytes, bytes]],
                          cookies_from: Iterable[tuple[bytes, bytes]],
                          hop: Hop) -> list[tuple[bytes, bytes]]:
        """What the upstream gets besides the identity headers: the client's relayable headers,
        the browser's cookies (from `cookies_from`) minus Stepguard's, the forwarding headers."""
        headers = relayed_raw_headers(client, self._ours)
        kept = cookies_header(cookies_from, self._ours)
        if kept:
            headers.append((b"cookie", kept))
        return headers + hop.raw()

    def hostname(self, scope: Scope, headers: Headers | RequestHeaders) -> str | None:
        """The host the client asked for, as `request.url.hostname` reads it ("" when none;
        None when the Host header is no URL authority)."""
        host = headers.get("host")
        if host is None:
            server = scope.get("server")
            return str(server[0]) if server else ""
        known = self._hosts.get(host)
        if known is None:
            try:
                known = urlsplit(f"http://{host}/").hostname or ""
            except ValueError:
                return None
            if len(host) <= 300:
                self._hosts.put(host, known)
        return known

    async def _send_relayed(self, send: Send, answer: Answer, method: str,
                            upstream: Upstream) -> None:
        """The upstream's answer for the client, without hop-by-hop headers (and those its
        `Connection` names); a complete answer in one piece with its length, anything else
        streamed as it arrives."""
        headers = self.answer_headers(upstream, answer.headers)
        if method == "HEAD":  # the upstream's Content-Length describes the body it did not send
            length = [(k, v) for k, v in answer.headers if k.lower() == b"content-length"]
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [*length, *headers]})
            await send({"type": "http.response.body", "body": b""})
            return
        if answer.complete:
            # One piece with its length: no chunked encoding, fewer writes (several small
            # writes per answer cost a delayed-ACK round on some stacks).
            data = b"".join(answer.body)
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [(b"content-length", b"%d" % len(data)), *headers]})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [*headers]})
        rest = answer.rest()
        try:
            for chunk in answer.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            async for chunk in rest:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await rest.aclose()

    def answer_headers(self, upstream: Upstream,
                       headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The upstream's headers as the client gets them (`_answer_headers`, then those of
        its `response_headers` it lacks): a pure function of them, remembered (bounded). The
        caller copies the list before it adds to it."""
        key = (id(upstream), *headers)
        found = self._answers.get(key)
        if found is None:
            found = merge_headers(_answer_headers(headers), self.relayed_headers[id(upstream)])
            self._answers.put(key, found)
        return found

    def hop(self, scope: Scope, headers: Headers | RequestHeaders) -> Hop:
        """The client's address and the forwarding facts: a trusted peer's X-Forwarded-* are
        believed (garbage refused), anyone else's replaced by what this proxy sees."""
        client = scope.get("client")
        peer = client[0] if client else ""
        forwarded_for = ", ".join(headers.getlist("x-forwarded-for"))
        client_ip = self.proxies.client_ip(peer, forwarded_for)
        proto, host = _scheme(scope), headers.get("host", "")
        if client_ip == peer:
            return Hop(peer, peer, proto, host)
        # From the client's own address on (anything it claimed before that is not relayed).
        hops = [h.strip(" \t") for h in forwarded_for.split(",")]
        chain = ", ".join([*hops[len(hops) - 1 - hops[::-1].index(client_ip):], peer])
        proto = headers.get("x-forwarded-proto", proto)
        return Hop(client_ip, chain, proto if proto in ("http", "https") else "http",
                   headers.get("x-forwarded-host", host))

    async def websocket(self, websocket: WebSocket) -> None:
        """A WebSocket upgrade is decided like a GET; only an allowed one is relayed (refused
        before `accept`, the client gets a 403). Then messages flow both ways until either
        side closes."""
        hostname = self.hostname(websocket.scope, websocket.headers)
        upstream = self.upstream_for(hostname) if hostname is not None else None
        check = None
        try:
            hop = self.hop(websocket.scope, websocket.headers)
            if upstream is not None:
                cookies = websocket.cookies
                context = self._context(websocket.scope, websocket.headers, cookies,
                                        hop.client_ip)
                context = _with_route(context, _route(upstream, context.path), Body())
                check = await self._check(context, token_key(self.session_cookie.token(cookies)))
        except (BadRequest, StoreUnavailable):
            check = None
        if upstream is None or check is None or check.decision.outcome is not Outcome.ALLOW:
            await websocket.close(code=1008)
            return
        headers = [(k, v) for k, v in relayed_request_headers(websocket.headers.items())
                   if not k.lower().startswith("sec-websocket-")]
        kept = cookies_header(websocket.scope["headers"], self._ours)
        headers += [("cookie", kept.decode("latin-1"))] if kept else []
        headers += [(name.decode("latin-1"), value.decode())  # as on HTTP: empty ones unsent
                    for name, value in self.identities.raw(check)]
        headers += hop.headers()
        url = "ws" + upstream.url.rstrip("/").removeprefix("http") + _target(websocket.scope)
        try:
            async with websocket_connect(
                url, additional_headers=headers, user_agent_header=None, compression=None,
                subprotocols=websocket.scope.get("subprotocols") or None,
                open_timeout=self.rt.config.server.request_timeout, max_size=WEBSOCKET_MAX_MESSAGE,
            ) as relay:
                await websocket.accept(subprotocol=relay.subprotocol)
                await _pump(websocket, relay)
        except (TimeoutError, OSError, InvalidHandshake):
            await websocket.close(code=1011)

    async def _check(self, context: RequestContext, key: str | None) -> Check:
        """The decision (`key`: the session token's hash): on the event loop when everything
        is cached, else in a thread."""
        check = self.guard.check_cached_key(context, key)
        return check if check is not None else await run_in_threadpool(
            self.guard.check_key, context, key)

    def _context(self, scope: Scope, headers: Headers | RequestHeaders, cookies: Mapping[str, str],
                 client_ip: str, body: Body | None = None) -> RequestContext:
        """The request's context before route attributes (a WebSocket upgrade is a GET); `body`
        when it was read, so a `_method` field in it is seen."""
        return build_context(
            method=scope.get("method", "GET"),
            scheme=_scheme(scope),
            host=headers.get("host", ""),
            target=_target(scope),
            client_ip=client_ip,
            headers=headers,
            device_id=self.devices.device_id(cookies.get(DEVICE_COOKIE)),
            honour_overrides=self.honour_overrides,
            body=body,
        )

    async def _begin(self, request: Request, check: Check, body: bytes) -> str:
        """Begin the step-up (`StepUp.begin`, in a thread): the request is held in the
        challenge, to be replayed once after it passes; `HeldTooLarge` when it cannot be."""
        held = HeldRequest(request.method, _held_headers(request), body)
        return await run_in_threadpool(
            lambda: self.stepup.begin(check.decision, check.context, check.session,
                                      return_url=str(request.url), held=held))

    def _step_up_answer(self, request: Request, check: Check, location: str) -> Response:
        """The answer for a step-up begun at `location` (renders only)."""
        if wants_html(request.headers):
            return RedirectResponse(location, 302 if request.method in ("GET", "HEAD") else 303)
        base = self.rt.config.server.public_url.rstrip("/")
        return step_up_response(check.decision, base + location, self.rt.policy)

    async def replay(self, request: Request, challenge_id: str, session: SessionRecord) -> Response:
        """Send the held request once, decided again now that the grant exists.

        The held request is taken from the store atomically first (passed -> sent): of any
        number of confirmations (double clicks, retries, races) exactly one gets it, whatever
        the rule, and a confirmation that fails after that point is not retried with it.
        """
        challenge = await run_in_threadpool(
            lambda: self.rt.store.challenges.take_held(challenge_id, session_id=session.id))
        if challenge is None:
            return Response("nothing to replay\n", 404)
        upstream = self.upstream_for(urlsplit(challenge.return_url).hostname or "")
        if upstream is None:
            return Response("no upstream for this request\n", 404)
        try:
            hop = self.hop(request.scope, request.headers)
            context, target = self._replay_context(request, upstream, challenge, hop.client_ip)
        except BadRequest:
            return Response("nothing to replay\n", 404)
        check = await self._check(context, token_key(self.session_cookie.token(request.cookies)))
        if check.decision.outcome is not Outcome.ALLOW:
            return Response("the confirmation no longer covers this request\n", 403)
        held = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in challenge.held_headers]
        headers = self._upstream_headers(
            held, request.scope["headers"], replace(hop, host=split_url(challenge.return_url)[1]))
        relayed = await self._relay(
            context.method, target, headers, challenge.held_body, upstream,
            self.identities.raw(check),
            retry=False,  # exactly once: never sent a second time, even on a dead connection
        )
        if isinstance(relayed, Response):
            return relayed
        request.scope[RELAYED] = True
        return _relayed_response(relayed, context.method,
                                 self.answer_headers(upstream, relayed.headers))

    def _replay_context(
        self, request: HTTPConnection, upstream: Upstream, challenge: ChallengeRecord,
        client_ip: str,
    ) -> tuple[RequestContext, str]:
        """The held request's context, built exactly as the original one was (same route
        attributes and action), so the replay gets the decision the step-up was for."""
        scheme, host, target = split_url(challenge.return_url)
        held = dict(challenge.held_headers)
        body = read_body(challenge.held_body, held.get("content-type", ""))
        context = build_context(
            method=challenge.held_method,
            scheme=scheme,
            host=host,
            target=target,
            client_ip=client_ip,
            headers=_with_held_overrides(request, challenge.held_headers),
            device_id=self.devices.device_id(request.cookies.get(DEVICE_COOKIE)),
            honour_overrides=self.honour_overrides,
            body=body,
        )
        return _with_route(context, _route(upstream, context.path), body), target

    async def _relay(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                     body: bytes | AsyncIterator[bytes], upstream: Upstream,
                     identity: list[tuple[bytes, bytes]], *, retry: bool = True,
                     ) -> Answer | Response:
        """Send to the upstream: the client's relayable headers, its cookies minus Stepguard's
        and the forwarding headers (`headers`), then the identity headers (set last, so
        nothing can remove them)."""
        origin, prefix = _origin_and_prefix(upstream.url)
        try:
            return await self.relay.send(origin, method, prefix + target, [*headers, *identity],
                                         body, retry=retry)
        except UpstreamError:
            return Response("the upstream application is unreachable\n", 502)


@functools.lru_cache(maxsize=64)
def _origin_and_prefix(url: str) -> tuple[str, str]:
    """An upstream URL's scheme and authority, and its path (the prefix of every target)."""
    base = urlsplit(url)
    return f"{base.scheme}://{base.netloc}", base.path.rstrip("/")


def _relayed_response(answer: Answer, method: str,
                      headers: list[tuple[bytes, bytes]]) -> Response:
    """The upstream's answer for the client with `headers` (`ReverseProxy.answer_headers`,
    not changed here); a complete answer in one piece, anything else streamed."""
    if method == "HEAD":  # the upstream's Content-Length describes the body it did not send
        response = Response(b"", answer.status)
        length = [(k, v) for k, v in answer.headers if k.lower() == b"content-length"]
        response.raw_headers = [*length, *headers]
        return response
    if answer.complete:
        # Small answers go back in one piece with their length: no chunked encoding, fewer
        # writes (several small writes per answer cost a delayed-ACK round on some stacks).
        response = Response(b"".join(answer.body), answer.status)
    else:
        response = StreamingResponse(_chained(answer), answer.status)
    response.raw_headers = [*_own_headers(response), *headers]
    return response


async def _chained(answer: Answer) -> AsyncIterator[bytes]:
    for chunk in answer.body:
        yield chunk
    async for chunk in answer.rest():
        yield chunk


def _answer_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers a client may see: no hop-by-hop ones, none its `Connection`
    names, no framing (Stepguard sets that)."""
    named = {token.strip().lower() for k, v in headers if k.lower() == b"connection"
             for token in v.split(b",")}
    return [(k, v) for k, v in headers
            if (low := k.lower()) not in RESPONSE_DROPPED and low not in named]


def _with_hsts(headers: Mapping[str, str], https: bool) -> list[tuple[str, str]]:
    """An upstream's `response_headers`, with Stepguard's HSTS over https unless they name
    their own."""
    named = {name.lower() for name in headers}
    hsts = https and "strict-transport-security" not in named
    return [*headers.items(), *([("Strict-Transport-Security", HSTS)] if hsts else [])]


def _own_headers(response: Response) -> list[tuple[bytes, bytes]]:
    """The framing headers Starlette computed (content-length), minus any content-type guess."""
    return [(k, v) for k, v in response.raw_headers if k == b"content-length"]


def relayed_request_headers(headers: Any) -> list[tuple[str, str]]:
    """`relayed_raw_headers` for (str, str) pairs (the WebSocket upgrade's headers)."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in relayed_raw_headers(raw, ())]


def relayed_raw_headers(raw: Iterable[tuple[bytes, bytes]],
                        ours: Iterable[str]) -> list[tuple[bytes, bytes]]:
    """The client's headers an upstream may see (ASGI names, lower-case): without hop-by-hop
    headers (and those the client's `Connection` names), identity headers, forwarding headers,
    method overrides and cookies — which the caller sets itself, after this, so a `Connection`
    list can never remove them. (`ours` is unused here: cookies are filtered by
    `cookies_header`.)"""
    pairs = list(raw)
    named = {token.strip().lower() for k, v in pairs if k == b"connection"
             for token in v.split(b",")}
    return [(k, v) for k, v in pairs if k not in named and not _dropped(k)]


_DROPPED: Memo[bytes, bool] = Memo(1024)


def _dropped(name: bytes) -> bool:
    """Whether a request header never reaches the upstream as the client sent it (memoised
    by name: the same few names come on every request)."""
    known = _DROPPED.get(name)
    if known is None:
        text = name.decode("latin-1").lower()
        known = (text in HOP_BY_HOP or is_identity_header(text) or _is_forwarding(text)
                 or is_override_header(text))  # an honoured override is sent as the method
        if len(name) <= 64:
            _DROPPED.put(name, known)
    return known


def cookies_header(raw: Iterable[tuple[bytes, bytes]], ours: Iterable[str]) -> bytes:
    """The browser's cookies minus Stepguard's own: the app keeps its cookies, never ours."""
    own = {name.encode("latin-1") for name in ours}
    kept = []
    for name, value in raw:
        if name != b"cookie":
            continue
        for part in value.split(b";"):
            key = part.split(b"=", 1)[0].strip()
            if key and key not in own:
                kept.append(part.strip())
    return b"; ".join(kept)


TOO_LARGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Request too large to hold</title></head>
<body><main><h1>Request too large to hold</h1>
<p>This request needs you to confirm it's you first (a step-up). Stepguard keeps the request
while you do, so nothing is lost, but it can keep at most {limit} bytes and this one is larger.
It was <strong>not sent</strong>, and nothing of it was kept.</p>
<p>Confirm it's you first (open the page again and repeat the step-up when asked), then send
the request again; or send a smaller request.</p></main></body></html>
"""


def too_large_to_hold(limit: int) -> Response:
    """413: a body that needs a step-up but exceeds the hold limit is refused, never cut."""
    return Response(TOO_LARGE.format(limit=html.escape(str(limit))), 413,
                    media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store"})


WEBSOCKET_MAX_MESSAGE = 16 << 20  # bytes of one relayed WebSocket message


async def _pump(client: WebSocket, relay: ClientConnection) -> None:
    """Relay messages both ways; when one side closes, close the other with its code."""

    async def inbound() -> None:
        try:
            while True:
                message = await client.receive()
                if message["type"] == "websocket.disconnect":
                    await relay.close(_sendable(message.get("code", 1000)))
                    return
                text = message.get("text")
                await relay.send(text if text is not None else message.get("bytes") or b"")
        except WebSocketDisconnect as gone:
            await relay.close(_sendable(gone.code))

    async def outbound() -> None:
        try:
            async for data in relay:
                if isinstance(data, str):
                    await client.send_text(data)
                else:
                    await client.send_bytes(data)
        except ConnectionClosed:
            pass
        await client.close(_sendable(relay.close_code or 1000))

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sendable(code: int) -> int:
    """A close code that may be sent on the wire (1005, 1006 and 1015 are reserved)."""
    return 1000 if code in (1005, 1006, 1015) else code


def _scheme(scope: Scope) -> str:
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


def _target(scope: Scope) -> str:
    raw = scope.get("raw_path") or quote(scope["path"]).encode()
    query = scope.get("query_string", b"")
    return raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")


def _with_route(context: RequestContext, route: UpstreamRoute | None, body: Body) -> RequestContext:
    """The route's action and its attributes (from the query, form or JSON body) added."""
    if route is None:
        return context
    context = with_attributes(context, route_attributes(route.attributes, context.query, body))
    return replace(context, action=route.action) if route.action else context


# Bodies a framework reads fields (and a `_method` override) from.
FIELD_MEDIA = ("application/x-www-form-urlencoded", "multipart/", "application/json")


def _inspects_body(route: UpstreamRoute | None, method: str,
                   headers: Headers | RequestHeaders) -> bool:
    """Whether the body must be read before deciding: the route takes attributes from it, or
    it is a POST whose form/JSON fields the application could read a `_method` from."""
    if route is not None and any(
            spec.split(":", 1)[0] in ("form", "json") for spec in route.attributes.values()):
        return True
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    return method == "POST" and (
        media.startswith(FIELD_MEDIA) or media.endswith("+json"))


async def _bounded_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds `limit` bytes (the rest is not read)."""
    chunks, size = [], 0
    async for chunk in _received(receive):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _received(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive (a disconnect ends the request)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _body_stream(scope: Scope, receive: Receive,
                 headers: Headers | RequestHeaders) -> bytes | AsyncIterator[bytes]:
    """The body as it arrives; no body at all (no length, not chunked) as b""."""
    if "transfer-encoding" not in headers and headers.get("content-length", "0") == "0":
        return b""
    return _received(receive)


def _route(upstream: Upstream, path: str) -> UpstreamRoute | None:
    return next((r for r in upstream.routes if path_matcher(r.paths)(path)), None)


def _with_held_overrides(request: HTTPConnection, held: Any) -> Headers:
    """This request's headers with the held request's method overrides in place of its own."""
    raw = [(k, v) for k, v in request.headers.raw if not is_override_header(k.decode("latin-1"))]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in held
            if is_override_header(k)]
    return Headers(raw=raw)


def _held_headers(request: Request) -> tuple[tuple[str, str], ...]:
    keep = ("content-type", "accept", "user-agent", "accept-language")
    return tuple((k, v) for k, v in request.headers.items()
                 if k.lower() in keep or is_override_header(k))  # the replay decides the same
