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
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from stepguard.adapters.http_context import (
    TrustedProxies,
    build_context,
    split_url,
    wants_html,
)
from stepguard.core.context import RequestContext
from stepguard.core.decision import Decision, Outcome
from stepguard.core.durations import format_duration
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.service.guard import Check, Guard
from stepguard.service.runtime import Runtime, unsign
from stepguard.service.stepup import StepUp


@dataclass(frozen=True)
class Original:
    """The original request as the proxy described it."""

    method: str
    scheme: str
    host: str
    target: str
    forwarded_for: str | None


class Strategy:
    """How one proxy describes the original request and wants a redirect answered."""

    redirect_status = 302

    def original(self, request: Request) -> Original:
        raise NotImplementedError

    def redirect(self, location: str, method: str) -> Response:
        status = self.redirect_status if method in ("GET", "HEAD") else 303
        return Response(status_code=status, headers={"Location": location})

    def refuse(self, reason: str) -> Response:
        """An ambiguous original request (SECURITY.md case 3): 400, passed on by the proxy."""
        return Response(f"bad request: {reason}\n", 400)


class CaddyStrategy(Strategy):
    def original(self, request: Request) -> Original:
        h = request.headers
        return Original(h.get("x-forwarded-method", "GET"), h.get("x-forwarded-proto", "http"),
                        h.get("x-forwarded-host", ""), h.get("x-forwarded-uri", "/"),
                        h.get("x-forwarded-for"))


class NginxStrategy(Strategy):
    def original(self, request: Request) -> Original:
        h = request.headers
        scheme, host, target = split_url(h.get("x-original-url", ""))
        return Original(h.get("x-original-method", "GET"), scheme, host, target,
                        h.get("x-forwarded-for"))

    def redirect(self, location: str, method: str) -> Response:
        return Response(status_code=401, headers={"Location": location})

    def refuse(self, reason: str) -> Response:
        """403: nginx turns any auth answer but 2xx, 401 and 403 into a 500 (an outage)."""
        return Response(f"bad request: {reason}\n", 403)


class ForwardAuth:
    """The one flow behind both endpoints."""

    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp) -> None:
        self.rt, self.guard, self.stepup = runtime, guard, stepup
        self.proxies = TrustedProxies.parse(runtime.config.server.trusted_proxies)
        self.honour_overrides = runtime.config.server.method_override == "honour"

    async def handle(self, request: Request, strategy: Strategy) -> Response:
        peer = request.client.host if request.client else ""
        if not self.proxies.trusts(peer):
            return Response("forward-auth is answered only for trusted proxies\n", 403)
        try:
            original = strategy.original(request)
            context = self.context(request, original, peer)
        except BadRequest as exc:
            return strategy.refuse(str(exc))
        try:
            check = self.guard.check_cached(context, self._token(request))
            if check is not None:  # everything was cached: no thread hop
                return self._answer(request, strategy, check, original)
            return await run_in_threadpool(self._decide, request, strategy, context, original)
        except StoreUnavailable:
            return Response("the session store is unavailable\n", 503,
                            headers={"Retry-After": "5"})

    def context(self, request: Request, original: Original, peer: str) -> RequestContext:
        client_ip = self.proxies.client_ip(peer, original.forwarded_for)
        device = unsign(self.rt.cookie_key, request.cookies.get(DEVICE_COOKIE))
        return build_context(method=original.method, scheme=original.scheme, host=original.host,
                             target=original.target, client_ip=client_ip,
                             headers=request.headers, device_id=device,
                             honour_overrides=self.honour_overrides)

    def _token(self, request: Request) -> str | None:
        name = self.rt.config.session.cookie_name
        return request.cookies.get(name) or _cookie_any(request, self.rt)

    def _decide(self, request: Request, strategy: Strategy, context: RequestContext,
                original: Original) -> Response:
        check = self.guard.check(context, self._token(request))
        return self._answer(request, strategy, check, original)

    def _answer(self, request: Request, strategy: Strategy, check: Check,
                original: Original) -> Response:
        decision = check.decision
        if decision.outcome is Outcome.ALLOW:
            return Response(status_code=200, headers=identity_headers(check, self.rt))
        if decision.outcome is Outcome.DENY:
            return Response(json.dumps({"error": "denied", "reasons": list(decision.reasons)}),
                            403, media_type="application/json")
        url = original_url(original)
        location = self.challenge_location(check, url)
        if wants_html(request.headers):
            return strategy.redirect(location, check.context.method)
        return api_challenge(decision, location, self.rt)

    def challenge_location(self, check: Check, return_url: str) -> str:
        base = self.rt.config.server.public_url.rstrip("/")
        return base + self.stepup.location(check.decision, check.context, check.session,
                                           return_url=return_url)


DEVICE_COOKIE = "stepguard_device"


def _cookie_any(request: Request, runtime: Runtime) -> str | None:
    name = runtime.config.session.cookie_name
    return request.cookies.get(f"__Host-{name}") or request.cookies.get(f"__Secure-{name}")


def original_url(original: Original) -> str:
    return f"{original.scheme}://{original.host}{original.target}"


def identity_headers(check: Check, runtime: Runtime) -> dict[str, str]:
    """Every identity header, always (Caddy 2.6 copies them unconditionally); empty if anonymous."""
    user, session = check.user, check.session
    level = check.decision.level
    acr = runtime.policy.levels[level].acr if user and level in runtime.policy.levels else ""
    amr = ",".join(session.state(user.subject()).amr()) if session and user else ""
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


def rfc9470(decision: Decision, location: str, runtime: Runtime) -> Response:
    """`401` with `WWW-Authenticate: Bearer error="insufficient_user_authentication"` (RFC 9470)."""
    requirement = decision.requirement
    description = _quoted(" ".join(decision.reasons) or "A stronger authentication is required.")
    parts = ['Bearer error="insufficient_user_authentication"',
             f'error_description="{description}"']
    if requirement is not None:
        parts.append(f'acr_values="{runtime.policy.levels[requirement.level].acr}"')
        if requirement.max_age is not None:
            parts.append(f"max_age={int(requirement.max_age)}")
    body = {"error": "insufficient_user_authentication", "reasons": list(decision.reasons),
            "challenge_url": location,
            "level": requirement.level.label if requirement else "aal1",
            "max_age": format_duration(requirement.max_age)
            if requirement and requirement.max_age is not None else None}
    return Response(json.dumps(body), 401, media_type="application/json",
                    headers={"WWW-Authenticate": ", ".join(parts), "Location": location})


def api_challenge(decision: Decision, location: str, runtime: Runtime) -> Response:
    """The RFC 9470 `401` for a proxy: the challenge URL only in the JSON body, never as a
    `Location` — nginx's deploy config redirects a 401 that has one (browsers) and passes one
    without it on (XHR and API clients in `location /`)."""
    response = rfc9470(decision, location, runtime)
    del response.headers["location"]
    return response


def _quoted(text: str) -> str:
    return "".join(ch for ch in text if 32 <= ord(ch) < 127 and ch not in '"\\')[:300]
