"""`StepguardMiddleware`: step-up for any ASGI application (Starlette, FastAPI, Django ASGI).

For each HTTP request it builds a `DecideRequest` from the ASGI scope (client-sent identity
headers removed first), asks the decider and translates the answer:

- allow → the app runs, with `scope["state"]["stepguard"]` = `StepguardState` (level, acr, amr,
  auth_time, subject, grant), i.e. `request.state.stepguard` in Starlette and FastAPI;
- step up → a browser is redirected (303) to the challenge URL; an API client gets the RFC 9470
  `401` with `WWW-Authenticate: Bearer error="insufficient_user_authentication", …`;
- deny → `403`;
- any failure of the decider (store down, remote API unreachable or slow, a bug) → `503`:
  the middleware fails closed and never lets a request through undecided.

Modes: **embedded** runs the decision flow in this process (`Guard.check` in a worker thread,
same store as a Stepguard server) and serves the portal pages itself; **remote** asks a
Stepguard server's `POST /api/v1/decide` (see `remote.RemoteDecider`).

The portal cannot live under a prefix: its pages, forms and redirects use absolute paths
(`/login`, `/step-up/{id}`, `/account`, `/static/…`). In embedded mode the middleware therefore
serves the portal at those standard paths on the application's own host (`portal_paths`); an
application must not use them for itself (or must pass `portal=False` and run the portal
elsewhere on the same host).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol
from urllib.parse import quote

import anyio
import anyio.to_thread
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from stepguard.adapters.bearer import BearerValidator
from stepguard.adapters.decision_api import (
    DecideRequest,
    DecideResponse,
    DecisionService,
    SubjectInfo,
)
from stepguard.adapters.forward_auth import DEVICE_COOKIE
from stepguard.adapters.http_context import (
    TrustedProxies,
    effective_method,
    is_identity_header,
    wants_html,
)
from stepguard.asgi.remote import RemoteDecider
from stepguard.core.canonical import split_target, wire_host
from stepguard.core.errors import BadRequest
from stepguard.service.guard import Guard
from stepguard.service.runtime import Runtime
from stepguard.service.stepup import StepUp

log = logging.getLogger("stepguard.asgi")

PORTAL_PATHS = ("/login", "/logout", "/step-up/", "/account", "/admin", "/static/",
                "/.well-known/stepguard-configuration")
SCOPE_KEY = "stepguard.middleware"
Attribute = bool | int | float | str | None


@dataclass(frozen=True, slots=True)
class GrantInfo:
    """The grant a step-up produced and this request used (`consumed`: single use, now spent)."""

    id: str
    consumed: bool


@dataclass(frozen=True, slots=True)
class StepguardState:
    """What an allowed request may rely on (`request.state.stepguard`)."""

    rule: str
    level: str | None
    acr: str | None
    amr: tuple[str, ...]
    auth_time: int | None
    subject: SubjectInfo | None
    grant: GrantInfo | None

    @classmethod
    def of(cls, answer: DecideResponse) -> StepguardState:
        subject = answer.subject
        grant = GrantInfo(answer.grant_id, answer.consumed_grant) if answer.grant_id else None
        return cls(rule=answer.rule, level=answer.level, acr=answer.acr,
                   amr=tuple(subject.amr) if subject else (),
                   auth_time=subject.auth_time if subject else None, subject=subject, grant=grant)


class Decider(Protocol):
    async def decide(self, request: DecideRequest) -> DecideResponse: ...


class EmbeddedDecider:
    """The decision flow in this process; blocking store calls run in worker threads.

    Decisions get their own small thread budget (`max_threads`), so they neither starve the
    application's threads nor pile up dozens of threads fighting over the GIL and the store.
    """

    def __init__(self, runtime: Runtime, *, bearer_validator: BearerValidator | None = None,
                 max_threads: int = 4) -> None:
        self.service = DecisionService(runtime, Guard(runtime), StepUp(runtime),
                                       bearer_validator=bearer_validator)
        self.max_threads = max_threads
        self._limiter: anyio.CapacityLimiter | None = None

    async def decide(self, request: DecideRequest) -> DecideResponse:
        answer = self.service.decide_cached(request)  # cached session: no thread hop
        if answer is not None:
            return answer
        if self._limiter is None:  # created inside the running event loop
            self._limiter = anyio.CapacityLimiter(self.max_threads)
        return await anyio.to_thread.run_sync(self.service.decide, request,
                                              limiter=self._limiter)


class StepguardMiddleware:
    def __init__(self, app: ASGIApp, *, mode: Literal["embedded", "remote"] = "embedded",
                 runtime: Runtime | None = None, remote: RemoteDecider | None = None,
                 bearer_validator: BearerValidator | None = None,
                 session_cookie: str | None = None, trusted_proxies: Sequence[str] | None = None,
                 portal: bool = True, portal_paths: Sequence[str] = PORTAL_PATHS,
                 exempt: Sequence[str] = (),
                 method_override: Literal["refuse", "honour"] | None = None) -> None:
        self.app = app
        self.decider, self.portal = _decider(mode, runtime, remote, bearer_validator, portal)
        config = runtime.config if runtime is not None and mode == "embedded" else None
        self.forward_bearer = (bearer_validator is not None or bool(config and config.bearer.issuer)
                               or bool(remote and remote.forward_bearer))
        default_cookie = config.session.cookie_name if config else "stepguard_session"
        self.cookie = session_cookie or default_cookie
        self.proxies = TrustedProxies.parse(
            trusted_proxies if trusted_proxies is not None
            else (config.server.trusted_proxies if config else ()))
        self.portal_paths = tuple(portal_paths) if self.portal else ()
        self.exempt = tuple(exempt)
        self.honour_overrides = (method_override or (
            config.server.method_override if config else "refuse")) == "honour"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope["headers"] = [(k, v) for k, v in scope["headers"]
                            if not is_identity_header(k.decode("latin-1"))]
        path = scope["path"]
        if self.portal is not None and _under(path, self.portal_paths):
            await self.portal(scope, receive, send)
            return
        if _under(path, self.exempt):
            await self.app(scope, receive, send)
            return
        scope[SCOPE_KEY] = self
        outcome = await self.evaluate(scope)
        if isinstance(outcome, StepguardState):
            scope.setdefault("state", {})["stepguard"] = outcome
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await outcome(scope, receive, send)

    async def evaluate(self, scope: Scope, *, action: str = "",
                       attributes: Mapping[str, Any] | None = None) -> StepguardState | Response:
        """Decide this request (optionally as an action with attributes): a state or a refusal."""
        try:
            request = self.request_for(scope, action, attributes or {})
            answer = await self.decider.decide(request)
        except BadRequest as exc:
            return bad_request(exc)
        except Exception:  # fail closed: whatever went wrong, nothing is allowed through
            log.exception("stepguard decision failed; answering 503")
            return _json({"error": "unavailable",
                          "detail": "the step-up service is unavailable"}, 503,
                         {"Retry-After": "5"})
        return self.render(answer, Headers(scope=scope))

    def request_for(self, scope: Scope, action: str,
                    attributes: Mapping[str, Any]) -> DecideRequest:
        headers = Headers(scope=scope)
        cookies = cookie_parser(headers.get("cookie", ""))
        peer = scope["client"][0] if scope.get("client") else ""
        query = scope.get("query_string", b"").decode("latin-1")
        path, _ = split_target(_raw_path(scope) + (f"?{query}" if query else ""))
        method = effective_method(scope.get("method", "GET"), headers=headers.items(),
                                  query=query, body=None, honour=self.honour_overrides)
        host = _host(scope, headers)
        wire_host(host)
        try:
            return DecideRequest(
                method=method, host=host,
                path=path, scheme="https" if scope["scheme"] in ("https", "wss")
                else "http", query=query,
                client_ip=self._client_ip(peer, headers),
                user_agent=headers.get("user-agent", "")[:512],
                device_cookie=cookies.get(DEVICE_COOKIE, "")[:256], action=action,
                attributes={k: _scalar(v) for k, v in attributes.items()},
                session_token=_session_token(cookies, self.cookie),
                bearer=self._bearer(headers), return_url=None)
        except ValidationError as exc:
            raise BadRequest(f"the request cannot be decided: {_first_error(exc)}") from None

    def _client_ip(self, peer: str, headers: Headers) -> str:
        return _ip_or_empty(self.proxies.client_ip(peer, headers.get("x-forwarded-for")))

    def _bearer(self, headers: Headers) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if self.forward_bearer and scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None

    def render(self, answer: DecideResponse, headers: Headers) -> StepguardState | Response:
        if answer.decision == "allow":
            return StepguardState.of(answer)
        if answer.decision == "deny":
            return _json({"error": "denied", "reasons": answer.reasons}, 403)
        if answer.token_error:
            return _json({"error": answer.token_error, "reasons": answer.reasons}, 401,
                         {"WWW-Authenticate": f'Bearer error="{answer.token_error}", '
                                              f'error_description="{_quoted(answer.reasons)}"'})
        if answer.challenge_url and wants_html(headers):
            return Response(status_code=303, headers={"Location": answer.challenge_url})
        return rfc9470(answer)


def bad_request(exc: BadRequest) -> Response:
    """The 400 for a request Stepguard cannot read the way the application will."""
    return _json({"error": "bad_request", "detail": str(exc)}, 400)


def rfc9470(answer: DecideResponse) -> Response:
    """`401` + `WWW-Authenticate: Bearer error="insufficient_user_authentication"` (RFC 9470)."""
    parts = ['Bearer error="insufficient_user_authentication"',
             f'error_description="{_quoted(answer.reasons)}"']
    if answer.acr:
        parts.append(f'acr_values="{answer.acr}"')
    if answer.max_age is not None:
        parts.append(f"max_age={answer.max_age}")
    body = {"error": "insufficient_user_authentication", "reasons": answer.reasons,
            "challenge_url": answer.challenge_url, "level": answer.level,
            "max_age": answer.max_age, "bound_values": answer.bound_values}
    headers = {"WWW-Authenticate": ", ".join(parts)}
    if answer.challenge_url:
        headers["Location"] = answer.challenge_url
    return _json(body, 401, headers)


def _decider(mode: str, runtime: Runtime | None, remote: RemoteDecider | None,
             bearer_validator: BearerValidator | None, portal: bool
             ) -> tuple[Decider, ASGIApp | None]:
    if mode == "embedded":
        if runtime is None:
            raise ValueError("embedded mode needs runtime=build_runtime(...)")
        return EmbeddedDecider(runtime, bearer_validator=bearer_validator), \
            _portal_app(runtime) if portal else None
    if mode == "remote":
        if remote is None:
            raise ValueError("remote mode needs remote=RemoteDecider(url, api_key)")
        return remote, None
    raise ValueError(f"unknown mode {mode!r} (expected 'embedded' or 'remote')")


def _portal_app(runtime: Runtime) -> ASGIApp:
    from stepguard.gateway import create_app

    return create_app(runtime)


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p if p.endswith("/") else p + "/")
               for p in prefixes)


def _host(scope: Scope, headers: Headers) -> str:
    host = headers.get("host")
    if host:
        return host
    server = scope.get("server")
    return f"{server[0]}:{server[1]}" if server else "localhost"


def _raw_path(scope: Scope) -> str:
    """The path as received (still percent-encoded), so that `canonical_path` sees every trick."""
    raw = scope.get("raw_path")
    if raw:
        return str(raw.partition(b"?")[0].decode("latin-1"))  # split_target refuses non-ASCII
    return quote(scope["path"], safe="/:@!$&'()*+,;=-._~")


def _ip_or_empty(text: str) -> str:
    """The client's IP, or "" when the peer is not an IP (a Unix socket, a test client)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def _session_token(cookies: Mapping[str, str], name: str) -> str | None:
    for candidate in (name, f"__Host-{name}", f"__Secure-{name}"):
        value = cookies.get(candidate)
        if value:
            return value
    return None


def _scalar(value: Any) -> Attribute:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_input=False, include_url=False)[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


def _quoted(reasons: Sequence[str]) -> str:
    text = " ".join(reasons) or "A stronger authentication is required."
    return "".join(ch for ch in text if 32 <= ord(ch) < 127 and ch not in '"\\')[:300]


def _json(body: object, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **(headers or {})})
