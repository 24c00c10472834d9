"""Forward-auth: one decision flow, small per-proxy strategies (DESIGN.md §7).

- Caddy `forward_auth` / Traefik ForwardAuth → `GET /api/authz/forward-auth`: reads
  `X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri`, `-For`; a browser is redirected (302/303).
- nginx `auth_request` → `GET /api/authz/auth-request`: reads `X-Original-URL`,
  `X-Original-Method`, `X-Forwarded-For`; nginx turns any 3xx into a 500, so a browser gets
  `401` + `Location` (the nginx config maps it with `error_page 401 =302 $auth_location`), and
  an ambiguous original request is refused with `403` rather than `400` (which nginx would
  turn into a `500`).
Forwarded headers count only when the peer is in `trusted_proxies`; from anyone else the request
is refused (403), since without them there is no original request to decide on.
Both proxies send the client's own headers along, so a method override header is seen (and
refused, or decided on with `server.method_override: honour`); the body is not, so a `_method`
form field cannot be seen here (docs/security.md).

Both endpoints are raw ASGI applications, dispatched before the portal's routing (see
`stepguard.gateway`): an allowed request costs no framework objects, one cookie parse, memoised
address and device-cookie checks, and one `http.response.start` with the identity headers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stepguard.adapters.cookies import DEVICE_COOKIE, DeviceCookies, SessionCookie, parse_cookies
from stepguard.adapters.http_context import (
    HeaderView,
    RequestHeaders,
    TrustedProxies,
    build_context,
    split_url,
    wants_html,
)
from stepguard.adapters.memo import Memo
from stepguard.adapters.rfc9470 import step_up_response
from stepguard.core.context import RequestContext
from stepguard.core.decision import Decision, Outcome
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.service.guard import Check, Guard
from stepguard.service.runtime import Runtime, token_key
from stepguard.service.stepup import StepUp

__all__ = ["DEVICE_COOKIE", "CaddyStrategy", "ForwardAuth", "IdentityHeaders", "NginxStrategy",
           "Original", "Strategy", "api_challenge", "identity_headers", "original_url"]

Observe = Callable[[int, float], None]  # (status, seconds) of one answer, for the metrics
RawHeaders = list[tuple[bytes, bytes]]
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


@dataclass(frozen=True)
class Original:
    """The original request as the proxy described it."""

    method: str
    scheme: str
    host: str
    target: str
    forwarded_for: str | None


@dataclass(frozen=True, slots=True)
class _Reading:
    """One request's headers as forward-auth reads them (remembered per raw headers)."""

    headers: RequestHeaders
    original: Original
    context: RequestContext
    key: str | None  # the session token's hash; None without a (usable) session cookie


class Strategy:
    """How one proxy describes the original request and wants a redirect answered."""

    redirect_status = 302

    def original(self, headers: HeaderView) -> Original:
        raise NotImplementedError

    def redirect(self, location: str, method: str) -> Response:
        status = self.redirect_status if method in ("GET", "HEAD") else 303
        return Response(status_code=status, headers={"Location": location})

    def refuse(self, reason: str) -> Response:
        """An ambiguous original request (SECURITY.md case 3): 400, passed on by the proxy."""
        return Response(f"bad request: {reason}\n", 400)


class CaddyStrategy(Strategy):
    def original(self, headers: HeaderView) -> Original:
        h = headers
        return Original(h.get("x-forwarded-method", "GET"), h.get("x-forwarded-proto", "http"),
                        h.get("x-forwarded-host", ""), h.get("x-forwarded-uri", "/"),
                        h.get("x-forwarded-for"))


class NginxStrategy(Strategy):
    def original(self, headers: HeaderView) -> Original:
        h = headers
        scheme, host, target = split_url(h.get("x-original-url", ""))
        return Original(h.get("x-original-method", "GET"), scheme, host, target,
                        h.get("x-forwarded-for"))

    def redirect(self, location: str, method: str) -> Response:
        return Response(status_code=401, headers={"Location": location})

    def refuse(self, reason: str) -> Response:
        """403: nginx turns any auth answer but 2xx, 401 and 403 into a 500 (an outage)."""
        return Response(f"bad request: {reason}\n", 403)


class Endpoint:
    """One forward-auth endpoint as a raw ASGI application."""

    def __init__(self, flow: ForwardAuth, strategy: Strategy) -> None:
        self.flow, self.strategy = flow, strategy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.flow.serve(scope, receive, send, self.strategy)


class ForwardAuth:
    """The one flow behind both endpoints; `endpoint(strategy)` is the raw ASGI app of one."""

    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp, *,
                 observe: Observe | None = None) -> None:
        self.rt, self.guard, self.stepup = runtime, guard, stepup
        self.proxies = TrustedProxies.parse(runtime.config.server.trusted_proxies)
        self.honour_overrides = runtime.config.server.method_override == "honour"
        self.session_cookie = SessionCookie.of(runtime.config)
        self.devices = DeviceCookies(runtime.cookie_key)
        self.observe = observe
        self.identities = IdentityHeaders(runtime)
        self._requests: Memo[tuple[object, ...], _Reading] = Memo(4096)

    def endpoint(self, strategy: Strategy) -> Endpoint:
        return Endpoint(self, strategy)

    async def serve(self, scope: Scope, receive: Receive, send: Send,
                    strategy: Strategy) -> None:
        start = time.perf_counter()
        answer = await self.handle(scope, strategy)
        status = 200 if isinstance(answer, list) else answer.status_code
        if self.observe is not None:
            self.observe(status, time.perf_counter() - start)
        if isinstance(answer, list):  # allowed: 200, the identity headers, no body
            await send({"type": "http.response.start", "status": 200, "headers": answer})
            await send(_EMPTY_BODY)
        else:
            await answer(scope, receive, send)

    async def handle(self, scope: Scope, strategy: Strategy) -> RawHeaders | Response:
        """The answer: an allow's raw headers, or a response (challenge, refusal, 503)."""
        client = scope.get("client")
        peer = client[0] if client else ""
        if not self.proxies.trusts(peer):
            return Response("forward-auth is answered only for trusted proxies\n", 403)
        reading = self.reading(scope, strategy, peer)
        if isinstance(reading, Response):
            return reading
        try:
            check = await self.guard.check_cached_key_async(reading.context, reading.key)
            if check is not None:  # everything was cached: no thread hop, nothing to store
                return self._answer(reading.headers, strategy, check,
                                    self._begin(check, reading.original))
            return await run_in_threadpool(self._decide, reading, strategy)
        except StoreUnavailable:
            return Response("the session store is unavailable\n", 503,
                            headers={"Retry-After": "5"})

    def reading(self, scope: Scope, strategy: Strategy, peer: str) -> _Reading | Response:
        """What the request says (the original request, its context, the session key): a pure
        function of the strategy, the peer and the raw headers, so the same headers are read
        once (bounded memo; a refusal is not remembered, it is refused again each time)."""
        raw = scope["headers"]
        key = (strategy, peer, *raw)
        try:
            found = self._requests.get(key)
        except TypeError:  # a server that gives headers as lists: read each time
            return self._read(raw, strategy, peer)
        if found is not None:
            return found
        fresh = self._read(raw, strategy, peer)
        if isinstance(fresh, _Reading):
            self._requests.put(key, fresh)
        return fresh

    def _read(self, raw: RawHeaders, strategy: Strategy, peer: str) -> _Reading | Response:
        headers = RequestHeaders(raw)
        cookies = parse_cookies(raw)
        try:
            original = strategy.original(headers)
            context = self.context(headers, cookies, original, peer)
        except BadRequest as exc:
            return strategy.refuse(str(exc))
        return _Reading(headers, original, context, token_key(self.session_cookie.token(cookies)))

    def context(self, headers: HeaderView, cookies: Mapping[str, str], original: Original,
                peer: str) -> RequestContext:
        client_ip = self.proxies.client_ip(peer, original.forwarded_for)
        return build_context(method=original.method, scheme=original.scheme, host=original.host,
                             target=original.target, client_ip=client_ip, headers=headers,
                             device_id=self.devices.device_id(cookies.get(DEVICE_COOKIE)),
                             honour_overrides=self.honour_overrides)

    def _decide(self, reading: _Reading, strategy: Strategy) -> RawHeaders | Response:
        """The flow in a worker thread: decide, begin the step-up it asks for, then answer."""
        check = self.guard.check_key(reading.context, reading.key)
        return self._answer(reading.headers, strategy, check, self._begin(check, reading.original))

    def _begin(self, check: Check, original: Original) -> str:
        """Where a step-up continues ("" for an allow or a deny): the sign-in page, or the page
        of a challenge stored now (`StepUp.begin`; `Guard.check_cached` never returns a
        step-up that needs one, so the event loop never writes here)."""
        if check.decision.outcome is not Outcome.STEP_UP:
            return ""
        base = self.rt.config.server.public_url.rstrip("/")
        return base + self.stepup.begin(check.decision, check.context, check.session,
                                        return_url=original_url(original))

    def _answer(self, headers: HeaderView, strategy: Strategy, check: Check,
                location: str) -> RawHeaders | Response:
        """The answer for a decision (renders only: a step-up's challenge is begun already)."""
        decision = check.decision
        if decision.outcome is Outcome.ALLOW:
            return self.identity(check)
        if decision.outcome is Outcome.DENY:
            return Response(json.dumps({"error": "denied", "reasons": list(decision.reasons)}),
                            403, media_type="application/json")
        if wants_html(headers):
            return strategy.redirect(location, check.context.method)
        return api_challenge(decision, location, self.rt)

    def identity(self, check: Check) -> RawHeaders:
        return self.identities.raw(check)


class IdentityHeaders:
    """The identity headers of a decision as raw ASGI pairs, remembered per user record, level
    and amr (a pure function of them; the record is compared whole, so any change is a new
    key). Forward-auth answers with every one, empty or not (a proxy copies them over the
    client's own); the reverse proxy, which drops the client's copies itself, sends upstream
    only those with a value (`keep_empty=False`)."""

    def __init__(self, runtime: Runtime, *, keep_empty: bool = True) -> None:
        self.rt, self.keep_empty = runtime, keep_empty
        self._memo: Memo[tuple[object, ...], RawHeaders] = Memo(4096)

    def raw(self, check: Check) -> RawHeaders:
        key = (check.user, check.decision.level, check.state.amr() if check.state else ())
        found = self._memo.get(key)
        if found is None:
            found = [(name.lower().encode("latin-1"), value.encode())
                     for name, value in identity_headers(check, self.rt).items()
                     if value or self.keep_empty]
            self._memo.put(key, found)
        return found


def original_url(original: Original) -> str:
    return f"{original.scheme}://{original.host}{original.target}"


def identity_headers(check: Check, runtime: Runtime) -> dict[str, str]:
    """Every identity header, always (Caddy 2.6 copies them unconditionally); empty if anonymous."""
    user, state = check.user, check.state
    level = check.decision.level
    acr = runtime.policy.levels[level].acr if user and level in runtime.policy.levels else ""
    amr = ",".join(state.amr()) if state and user else ""
    return {
        "Remote-User": user.username if user else "",
        "Remote-Groups": ",".join(sorted(user.groups)) if user else "",
        "Remote-Email": user.email if user else "",
        "Remote-Name": _header_safe(user.display_name) if user else "",
        "Stepguard-Acr": acr,
        "Stepguard-Amr": amr,
    }


def _header_safe(text: str) -> str:
    return "".join(ch for ch in text if 32 <= ord(ch) < 127)


def api_challenge(decision: Decision, location: str, runtime: Runtime) -> Response:
    """The RFC 9470 `401` for a proxy: the challenge URL only in the JSON body, never as a
    `Location` — nginx's deploy config redirects a 401 that has one (browsers) and passes one
    without it on (XHR and API clients in `location /`)."""
    return step_up_response(decision, location, runtime.policy, with_location=False)
