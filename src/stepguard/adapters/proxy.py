"""Reverse-proxy mode: Stepguard fronts an upstream app itself (`upstreams:` in the config).

Client-sent identity headers are stripped; the identity headers are added. Route attributes for
`when` and `bind` come from the query, form fields or JSON body (declared per route). A POST that
triggers a step-up is held server-side (bounded) and, once the user passes and confirms, replayed
— so form data is not lost. The replay is decided again, so a single-use grant is spent by it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from stepguard.adapters.forward_auth import DEVICE_COOKIE, identity_headers, rfc9470
from stepguard.adapters.http_context import (
    Body,
    build_context,
    is_identity_header,
    is_override_header,
    read_body,
    route_attributes,
    split_url,
    wants_html,
)
from stepguard.config.schema import Upstream, UpstreamRoute
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.core.matching import path_matcher
from stepguard.service.guard import Guard, with_attributes
from stepguard.service.runtime import Runtime, unsign
from stepguard.service.stepup import HeldRequest, StepUp
from stepguard.storage.records import HELD_BODY_LIMIT, SessionRecord

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
        self.honour_overrides = runtime.config.server.method_override == "honour"

    def upstream_for(self, host: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.host in (host, "*")), None)

    async def handle(self, request: Request) -> Response:
        try:
            upstream = self.upstream_for(request.url.hostname or "")
        except ValueError:  # a Host that is no URL authority (`[::1`): the client's error
            return Response("bad request: invalid Host header\n", 400)
        if upstream is None:
            return Response("no upstream for this host\n", 404)
        body = await request.body()
        if len(body) > HELD_BODY_LIMIT * 16:
            return Response("request body too large\n", 413)
        try:
            context = self._context(request, upstream, body)
        except BadRequest as exc:
            return Response(f"bad request: {exc}\n", 400)
        try:
            check = await run_in_threadpool(self.guard.check, context, self._token(request))
        except StoreUnavailable:
            return Response("the session store is unavailable\n", 503, headers={"Retry-After": "5"})
        if check.decision.outcome is Outcome.ALLOW:
            return await self.forward(
                context.method,
                _target(request),
                request.headers.items(),
                body,
                upstream,
                identity_headers(check, self.rt),
            )
        if check.decision.outcome is Outcome.DENY:
            return Response(" ".join(check.decision.reasons) + "\n", 403)
        return await self._challenge(request, check, body)

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

    def _token(self, request: Request) -> str | None:
        return request.cookies.get(self.cookie_name)

    def _context(self, request: Request, upstream: Upstream, raw_body: bytes) -> RequestContext:
        body = read_body(raw_body, request.headers.get("content-type", ""))
        context = build_context(
            method=request.method,
            scheme=request.url.scheme,
            host=request.headers.get("host", ""),
            target=_target(request),
            client_ip=request.client.host if request.client else "",
            headers=request.headers,
            device_id=unsign(self.rt.cookie_key, request.cookies.get(DEVICE_COOKIE)),
            honour_overrides=self.honour_overrides,
            body=body,
        )
        return _with_route(context, upstream, body)

    async def _challenge(self, request: Request, check: Any, body: bytes) -> Response:
        url = str(request.url)
        base = self.rt.config.server.public_url.rstrip("/")
        held = HeldRequest(request.method, _held_headers(request), body[:HELD_BODY_LIMIT])
        location = await run_in_threadpool(
            lambda: self.stepup.location(check.decision, check.context, check.session,
                                         return_url=url, held=held)
        )
        if wants_html(request.headers):
            return RedirectResponse(location, 302 if request.method in ("GET", "HEAD") else 303)
        return rfc9470(check.decision, base + location, self.rt)

    async def replay(self, request: Request, challenge_id: str, session: SessionRecord) -> Response:
        """Send the held request, decided again now that the grant exists."""
        challenge = await run_in_threadpool(self.rt.store.challenges.get, challenge_id)
        if challenge is None or challenge.status != "passed" or challenge.session_id != session.id:
            return Response("nothing to replay\n", 404)
        upstream = self.upstream_for(urlsplit(challenge.return_url).hostname or "")
        if upstream is None:
            return Response("no upstream for this request\n", 404)
        try:
            context, target = self._replay_context(request, upstream, challenge)
        except BadRequest:
            return Response("nothing to replay\n", 404)
        check = await run_in_threadpool(self.guard.check, context, self._token(request))
        if check.decision.outcome is not Outcome.ALLOW:
            return Response("the confirmation no longer covers this request\n", 403)
        return await self.forward(
            context.method,
            target,
            list(challenge.held_headers),
            challenge.held_body,
            upstream,
            identity_headers(check, self.rt),
        )

    def _replay_context(
        self, request: Request, upstream: Upstream, challenge: Any
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
            client_ip=request.client.host if request.client else "",
            headers=_with_held_overrides(request, challenge.held_headers),
            device_id=unsign(self.rt.cookie_key, request.cookies.get(DEVICE_COOKIE)),
            honour_overrides=self.honour_overrides,
            body=body,
        )
        return _with_route(context, upstream, body), target

    async def forward(
        self,
        method: str,
        target: str,
        headers: Any,
        body: bytes,
        upstream: Upstream,
        identity: dict[str, str],
    ) -> Response:
        # An honoured override is decided on and sent as the method itself (issue 9 item 6).
        out = [
            (k, v) for k, v in headers
            if k.lower() not in HOP_BY_HOP and not is_identity_header(k)
            and not is_override_header(k)
        ]
        cookies = self._app_cookies(headers)
        if cookies:
            out.append(("cookie", cookies))
        out += list(identity.items())
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


def _target(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")


def _with_route(context: RequestContext, upstream: Upstream, body: Body) -> RequestContext:
    """The route's action and its attributes (from the query, form or JSON body) added."""
    route = _route(upstream, context.path)
    if route is None:
        return context
    context = with_attributes(context, route_attributes(route.attributes, context.query, body))
    return replace(context, action=route.action) if route.action else context


def _route(upstream: Upstream, path: str) -> UpstreamRoute | None:
    return next((r for r in upstream.routes if path_matcher(r.paths)(path)), None)


def _with_held_overrides(request: Request, held: Any) -> Headers:
    """This request's headers with the held request's method overrides in place of its own."""
    raw = [(k, v) for k, v in request.headers.raw if not is_override_header(k.decode("latin-1"))]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in held
            if is_override_header(k)]
    return Headers(raw=raw)


def _held_headers(request: Request) -> tuple[tuple[str, str], ...]:
    keep = ("content-type", "accept", "user-agent", "accept-language")
    return tuple((k, v) for k, v in request.headers.items()
                 if k.lower() in keep or is_override_header(k))  # the replay decides the same
