"""Reverse-proxy mode: Stepguard fronts an upstream app itself (`upstreams:` in the config).

Client-sent identity headers are stripped; the identity headers are added. Route attributes for
`when` and `bind` come from the query, form fields or JSON body (declared per route). A POST that
triggers a step-up is held server-side (bounded) and, once the user passes and confirms, replayed
— so form data is not lost. The replay is decided again, so a single-use grant is spent by it.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from stepguard.adapters.forward_auth import DEVICE_COOKIE, identity_headers, rfc9470
from stepguard.adapters.http_context import (
    Body,
    TrustedProxies,
    build_context,
    is_identity_header,
    is_override_header,
    read_body,
    route_attributes,
    split_url,
    wants_html,
)
from stepguard.adapters.relay import Answer, Relay, UpstreamError
from stepguard.config.schema import Upstream, UpstreamRoute
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.core.matching import path_matcher
from stepguard.service.guard import Check, Guard, with_attributes
from stepguard.service.runtime import Runtime, unsign
from stepguard.service.stepup import HeldRequest, HeldTooLarge, StepUp
from stepguard.storage.records import HELD_BODY_LIMIT, ChallengeRecord, SessionRecord

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


# From the upstream's answer: hop-by-hop headers and the framing Stepguard sets itself.
RESPONSE_DROPPED = frozenset({"connection", "keep-alive", "proxy-authenticate", "te", "trailers",
                              "transfer-encoding", "upgrade", "content-length"})


class ReverseProxy:
    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp, *, cookie_name: str) -> None:
        self.rt, self.guard, self.stepup = runtime, guard, stepup
        self.cookie_name = cookie_name
        # No cookie jar (a proxy must not keep upstream cookies), no redirects followed.
        self.relay = Relay(timeout=runtime.config.server.request_timeout)
        self.upstreams = list(runtime.config.upstreams)
        self.proxies = TrustedProxies.parse(runtime.config.server.trusted_proxies)
        self.honour_overrides = runtime.config.server.method_override == "honour"

    def upstream_for(self, host: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.host in (host, "*")), None)

    async def handle(self, request: Request) -> Response:
        """Decide, then relay. The body is read (bounded) only when it must be inspected: for
        the route's attributes, for a method override a framework would read from it, or to
        hold it across a step-up; else it streams through."""
        try:
            upstream = self.upstream_for(request.url.hostname or "")
        except ValueError:  # a Host that is no URL authority (`[::1`): the client's error
            return Response("bad request: invalid Host header\n", 400)
        if upstream is None:
            return Response("no upstream for this host\n", 404)
        body: bytes | None = None
        try:
            hop = self.hop(request)
            context = self._context(request, hop.client_ip)
            route = _route(upstream, context.path)
            fields = Body()
            if _inspects_body(route, request):
                body = await _bounded_body(request, INSPECT_LIMIT)
                if body is None:
                    return Response("request body too large\n", 413)
                fields = read_body(body, request.headers.get("content-type", ""))
                context = self._context(request, hop.client_ip, fields)
            context = _with_route(context, route, fields)
        except BadRequest as exc:
            return Response(f"bad request: {exc}\n", 400)
        try:
            check = await self._check(context, self._token(request))
        except StoreUnavailable:
            return Response("the session store is unavailable\n", 503, headers={"Retry-After": "5"})
        if check.decision.outcome is Outcome.ALLOW:
            return await self.forward(
                context.method,  # an honoured override is sent as the method (issue 9 item 6)
                _target(request),
                request.headers.items(),
                body if body is not None else _body_stream(request),
                upstream,
                identity_headers(check, self.rt),
                hop,
            )
        if check.decision.outcome is Outcome.DENY:
            return Response(" ".join(check.decision.reasons) + "\n", 403)
        if body is None:
            body = await _bounded_body(request, self.stepup.hold_limit)
            if body is None:
                return too_large_to_hold(self.stepup.hold_limit)
        return await self._challenge(request, check, body)

    def hop(self, request: HTTPConnection) -> Hop:
        """The client's address and the forwarding facts: a trusted peer's X-Forwarded-* are
        believed (garbage refused), anyone else's replaced by what this proxy sees."""
        peer = request.client.host if request.client else ""
        headers = request.headers
        forwarded_for = ", ".join(headers.getlist("x-forwarded-for"))
        client_ip = self.proxies.client_ip(peer, forwarded_for)
        proto, host = _scheme(request), headers.get("host", "")
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
        upstream = self.upstream_for(websocket.url.hostname or "")
        check = None
        try:
            hop = self.hop(websocket)
            if upstream is not None:
                context = self._context(websocket, hop.client_ip)
                context = _with_route(context, _route(upstream, context.path), Body())
                check = await self._check(context, self._token(websocket))
        except (BadRequest, StoreUnavailable):
            check = None
        if upstream is None or check is None or check.decision.outcome is not Outcome.ALLOW:
            await websocket.close(code=1008)
            return
        headers = [(k, v) for k, v in relayed_request_headers(websocket.headers.items())
                   if not k.lower().startswith("sec-websocket-")]
        cookies = self._app_cookies(websocket.headers.items())
        headers += [("cookie", cookies)] if cookies else []
        headers += [*identity_headers(check, self.rt).items(), *hop.headers()]
        url = "ws" + upstream.url.rstrip("/").removeprefix("http") + _target(websocket)
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

    def _app_cookies(self, headers: Any) -> str:
        """The browser's cookies minus Stepguard's own: the app keeps its cookies, never ours."""
        ours = {self.cookie_name, DEVICE_COOKIE, "stepguard_pre", "stepguard_enrol"}
        kept = []
        for name, value in headers:
            if name.lower() != "cookie":
                continue
            for part in value.split(";"):
                key = part.split("=", 1)[0].strip()
                if key and key not in ours:
                    kept.append(part.strip())
        return "; ".join(kept)

    def _token(self, request: HTTPConnection) -> str | None:
        return request.cookies.get(self.cookie_name)

    async def _check(self, context: RequestContext, token: str | None) -> Check:
        """The decision: on the event loop when everything is cached, else in a thread."""
        check = self.guard.check_cached(context, token)
        return check if check is not None else await run_in_threadpool(
            self.guard.check, context, token)

    def _context(self, request: HTTPConnection, client_ip: str,
                 body: Body | None = None) -> RequestContext:
        """The request's context before route attributes (a WebSocket upgrade is a GET); `body`
        when it was read, so a `_method` field in it is seen."""
        return build_context(
            method=request.scope.get("method", "GET"),
            scheme=_scheme(request),
            host=request.headers.get("host", ""),
            target=_target(request),
            client_ip=client_ip,
            headers=request.headers,
            device_id=unsign(self.rt.cookie_key, request.cookies.get(DEVICE_COOKIE)),
            honour_overrides=self.honour_overrides,
            body=body,
        )

    async def _challenge(self, request: Request, check: Any, body: bytes) -> Response:
        url = str(request.url)
        base = self.rt.config.server.public_url.rstrip("/")
        held = HeldRequest(request.method, _held_headers(request), body)
        try:
            location = await run_in_threadpool(
                lambda: self.stepup.location(check.decision, check.context, check.session,
                                             return_url=url, held=held)
            )
        except HeldTooLarge as exc:
            return too_large_to_hold(exc.limit)
        if wants_html(request.headers):
            return RedirectResponse(location, 302 if request.method in ("GET", "HEAD") else 303)
        return rfc9470(check.decision, base + location, self.rt)

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
            hop = self.hop(request)
            context, target = self._replay_context(request, upstream, challenge, hop.client_ip)
        except BadRequest:
            return Response("nothing to replay\n", 404)
        check = await self._check(context, self._token(request))
        if check.decision.outcome is not Outcome.ALLOW:
            return Response("the confirmation no longer covers this request\n", 403)
        return await self.forward(
            context.method,
            target,
            list(challenge.held_headers),
            challenge.held_body,
            upstream,
            identity_headers(check, self.rt),
            replace(hop, host=split_url(challenge.return_url)[1]),
            retry=False,  # exactly once: never sent a second time, even on a dead connection
        )

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
            device_id=unsign(self.rt.cookie_key, request.cookies.get(DEVICE_COOKIE)),
            honour_overrides=self.honour_overrides,
            body=body,
        )
        return _with_route(context, _route(upstream, context.path), body), target

    async def forward(
        self,
        method: str,
        target: str,
        headers: Any,
        body: bytes | AsyncIterator[bytes],
        upstream: Upstream,
        identity: dict[str, str],
        hop: Hop,
        *,
        retry: bool = True,
    ) -> Response:
        out = relayed_request_headers(headers)
        cookies = self._app_cookies(headers)
        if cookies:
            out.append(("cookie", cookies))
        out += [(k, _wire(v)) for k, v in identity.items()]
        out += hop.headers()
        base = urlsplit(upstream.url)
        try:
            answer = await self.relay.send(f"{base.scheme}://{base.netloc}", method,
                                           base.path.rstrip("/") + target, out, body,
                                           retry=retry)
        except UpstreamError:
            return Response("the upstream application is unreachable\n", 502)
        return _relayed_response(answer, method)


def _relayed_response(answer: Answer, method: str) -> Response:
    """The upstream's answer for the client: without hop-by-hop headers (and those its
    `Connection` names); a complete answer in one piece, anything else streamed."""
    named = {token.strip().lower().encode() for k, v in answer.headers
             if k.lower() == b"connection" for token in v.decode("latin-1").split(",")}
    headers = [(k, v) for k, v in answer.headers
               if k.lower().decode("latin-1") not in RESPONSE_DROPPED and k.lower() not in named]
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


def _wire(value: str) -> str:
    """A header value as UTF-8 bytes spelled in latin-1 (how the relay writes headers)."""
    return value.encode("utf-8").decode("latin-1")


def _own_headers(response: Response) -> list[tuple[bytes, bytes]]:
    """The framing headers Starlette computed (content-length), minus any content-type guess."""
    return [(k, v) for k, v in response.raw_headers if k == b"content-length"]


def relayed_request_headers(headers: Any) -> list[tuple[str, str]]:
    """The client's headers an upstream may see: without hop-by-hop headers (and those the
    client's `Connection` names), identity headers, forwarding headers and cookies — which the
    caller sets itself, after this, so a `Connection` list can never remove them."""
    pairs = list(headers)
    named = {token.strip().lower() for k, v in pairs if k.lower() == "connection"
             for token in v.split(",")}
    return [(k, v) for k, v in pairs
            if k.lower() not in HOP_BY_HOP and k.lower() not in named
            and not is_identity_header(k) and not _is_forwarding(k)
            and not is_override_header(k)]  # an honoured override is sent as the method


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


def _scheme(connection: HTTPConnection) -> str:
    return "https" if connection.url.scheme in ("https", "wss") else "http"


def _target(request: HTTPConnection) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")


def _with_route(context: RequestContext, route: UpstreamRoute | None, body: Body) -> RequestContext:
    """The route's action and its attributes (from the query, form or JSON body) added."""
    if route is None:
        return context
    context = with_attributes(context, route_attributes(route.attributes, context.query, body))
    return replace(context, action=route.action) if route.action else context


# Bodies a framework reads fields (and a `_method` override) from.
FIELD_MEDIA = ("application/x-www-form-urlencoded", "multipart/", "application/json")


def _inspects_body(route: UpstreamRoute | None, request: Request) -> bool:
    """Whether the body must be read before deciding: the route takes attributes from it, or
    it is a POST whose form/JSON fields the application could read a `_method` from."""
    if route is not None and any(
            spec.split(":", 1)[0] in ("form", "json") for spec in route.attributes.values()):
        return True
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return request.method == "POST" and (
        media.startswith(FIELD_MEDIA) or media.endswith("+json"))


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds `limit` bytes (the rest is not read)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _body_stream(request: Request) -> bytes | AsyncIterator[bytes]:
    """The body as it arrives; no body at all (no length, not chunked) as b""."""
    headers = request.headers
    if "transfer-encoding" not in headers and headers.get("content-length", "0") == "0":
        return b""
    return request.stream()


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
