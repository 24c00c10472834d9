"""Reverse-proxy mode: Stepguard fronts an upstream app itself (`upstreams:` in the config).

Client-sent identity headers are stripped; the identity headers are added. Route attributes for
`when` and `bind` come from the query, form fields or JSON body (declared per route). A POST that
triggers a step-up is held server-side (bounded) and, once the user passes and confirms, replayed
— so form data is not lost. The replay is decided again, so a single-use grant is spent by it.
"""

from __future__ import annotations

import asyncio
import html
import json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from stepguard.adapters.forward_auth import DEVICE_COOKIE, identity_headers, rfc9470
from stepguard.adapters.http_context import (
    TrustedProxies,
    build_context,
    is_identity_header,
    split_url,
    wants_html,
)
from stepguard.config.schema import Upstream, UpstreamRoute
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.core.matching import path_matcher
from stepguard.service.guard import Check, Guard, with_attributes
from stepguard.service.runtime import Runtime, unsign
from stepguard.service.stepup import HeldRequest, HeldTooLarge, StepUp
from stepguard.storage.records import HELD_BODY_LIMIT, ChallengeRecord, SessionRecord

BUFFER_LIMIT = 1 << 20  # answers up to 1 MiB with a Content-Length are relayed in one piece
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
        # No cookie jar (a proxy must not keep upstream cookies), no redirects followed, and a
        # small keep-alive pool: httpcore checks every idle connection on each request.
        self.client = httpx.AsyncClient(
            timeout=runtime.config.server.request_timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=8),
            cookies=_NoCookies(),
        )
        self.upstreams = list(runtime.config.upstreams)
        self.proxies = TrustedProxies.parse(runtime.config.server.trusted_proxies)

    def upstream_for(self, host: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.host in (host, "*")), None)

    async def handle(self, request: Request) -> Response:
        upstream = self.upstream_for(request.url.hostname or "")
        if upstream is None:
            return Response("no upstream for this host\n", 404)
        body = await request.body()
        if len(body) > HELD_BODY_LIMIT * 16:
            return Response("request body too large\n", 413)
        try:
            hop = self.hop(request)
            context = self._context(request, upstream, body, hop.client_ip, request.method)
        except BadRequest as exc:
            return Response(f"bad request: {exc}\n", 400)
        try:
            check = await self._check(context, self._token(request))
        except StoreUnavailable:
            return Response("the session store is unavailable\n", 503, headers={"Retry-After": "5"})
        if check.decision.outcome is Outcome.ALLOW:
            return await self.forward(
                request.method,
                _target(request),
                request.headers.items(),
                body,
                upstream,
                identity_headers(check, self.rt),
                hop,
            )
        if check.decision.outcome is Outcome.DENY:
            return Response(" ".join(check.decision.reasons) + "\n", 403)
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
        try:
            hop = self.hop(websocket)
            context = self._context(websocket, upstream, b"", hop.client_ip) if upstream else None
            check = await self._check(context, self._token(websocket)) if context else None
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
                subprotocols=websocket.scope.get("subprotocols") or None,  # type: ignore[arg-type]
                open_timeout=self.rt.config.server.request_timeout, max_size=WEBSOCKET_MAX_MESSAGE,
            ) as relay:
                await websocket.accept(subprotocol=relay.subprotocol)
                await _pump(websocket, relay)
        except (OSError, InvalidHandshake, asyncio.TimeoutError):
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

    def _context(self, request: HTTPConnection, upstream: Upstream, body: bytes,
                 client_ip: str, method: str = "GET") -> RequestContext:
        context = build_context(
            method=method,
            scheme=_scheme(request),
            host=request.headers.get("host", ""),
            target=_target(request),
            client_ip=client_ip,
            headers=request.headers,
            device_id=unsign(self.rt.cookie_key, request.cookies.get(DEVICE_COOKIE)),
        )
        return _with_route(context, upstream, body, request.headers.get("content-type", ""))

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
            challenge.held_method,
            target,
            list(challenge.held_headers),
            challenge.held_body,
            upstream,
            identity_headers(check, self.rt),
            replace(hop, host=split_url(challenge.return_url)[1]),
        )

    def _replay_context(
        self, request: HTTPConnection, upstream: Upstream, challenge: ChallengeRecord, client_ip: str
    ) -> tuple[RequestContext, str]:
        """The held request's context, built exactly as the original one was (same route
        attributes and action), so the replay gets the decision the step-up was for."""
        scheme, host, target = split_url(challenge.return_url)
        context = build_context(
            method=challenge.held_method,
            scheme=scheme,
            host=host,
            target=target,
            client_ip=client_ip,
            headers=request.headers,
            device_id=unsign(self.rt.cookie_key, request.cookies.get(DEVICE_COOKIE)),
        )
        held = dict(challenge.held_headers)
        content_type = held.get("content-type", "")
        return _with_route(context, upstream, challenge.held_body, content_type), target

    async def forward(
        self,
        method: str,
        target: str,
        headers: Any,
        body: bytes,
        upstream: Upstream,
        identity: dict[str, str],
        hop: Hop,
    ) -> Response:
        out = relayed_request_headers(headers)
        cookies = self._app_cookies(headers)
        if cookies:
            out.append(("cookie", cookies))
        out += list(identity.items())
        out += hop.headers()
        request = self.client.build_request(
            method, upstream.url.rstrip("/") + target, headers=out, content=body
        )
        try:
            upstream_response = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            return Response("the upstream application is unreachable\n", 502)
        headers = [(k.encode("latin-1"), v.encode("latin-1"))
                   for k, v in upstream_response.headers.multi_items()
                   if k.lower() not in RESPONSE_DROPPED]
        length = upstream_response.headers.get("content-length", "")
        if length.isdigit() and int(length) <= BUFFER_LIMIT:
            # Small answers go back in one piece with their length: no chunked encoding, fewer
            # writes (several small writes per answer cost a delayed-ACK round on some stacks).
            try:
                content = await upstream_response.aread()
            finally:
                await upstream_response.aclose()
            response = Response(content, upstream_response.status_code)
        else:
            response = StreamingResponse(upstream_response.aiter_raw(),
                                         upstream_response.status_code,
                                         background=BackgroundTask(upstream_response.aclose))
        response.raw_headers = [*_own_headers(response), *headers]
        return response


def _own_headers(response: Response) -> list[tuple[bytes, bytes]]:
    """The framing headers Starlette computed (content-length), minus any content-type guess."""
    return [(k, v) for k, v in response.raw_headers if k == b"content-length"]


class _NoCookies(httpx.Cookies):
    """A jar that stores nothing: upstream cookies pass through to the browser, never shared
    between users through the proxy's client."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def relayed_request_headers(headers: Any) -> list[tuple[str, str]]:
    """The client's headers an upstream may see: without hop-by-hop headers (and those the
    client's `Connection` names), identity headers, forwarding headers and cookies — which the
    caller sets itself, after this, so a `Connection` list can never remove them."""
    pairs = list(headers)
    named = {token.strip().lower() for k, v in pairs if k.lower() == "connection"
             for token in v.split(",")}
    return [(k, v) for k, v in pairs
            if k.lower() not in HOP_BY_HOP and k.lower() not in named
            and not is_identity_header(k) and not _is_forwarding(k)]


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


def _with_route(
    context: RequestContext, upstream: Upstream, body: bytes, content_type: str
) -> RequestContext:
    """The route's action and its attributes (from the query, form or JSON body) added."""
    route = _route(upstream, context.path)
    if route is None:
        return context
    context = with_attributes(context, _attributes(route, context.query, body, content_type))
    return replace(context, action=route.action) if route.action else context


def _route(upstream: Upstream, path: str) -> UpstreamRoute | None:
    return next((r for r in upstream.routes if path_matcher(r.paths)(path)), None)


def _attributes(route: UpstreamRoute, query: str, body: bytes, content_type: str) -> dict[str, Any]:
    sources = {"query": dict(parse_qsl(query))}
    if "application/x-www-form-urlencoded" in content_type:
        sources["form"] = dict(parse_qsl(body.decode("utf-8", "replace")))
    elif "json" in content_type:
        try:
            loaded = json.loads(body or b"null")
            sources["json"] = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            sources["json"] = {}
    found: dict[str, Any] = {}
    for name, spec in route.attributes.items():
        kind, _, key = spec.partition(":")
        value = _dig(sources.get(kind, {}), key)
        if value is not None:
            found[name] = value
    return found


def _dig(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _held_headers(request: Request) -> tuple[tuple[str, str], ...]:
    keep = ("content-type", "accept", "user-agent", "accept-language")
    return tuple((k, v) for k, v in request.headers.items() if k.lower() in keep)
