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
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, Protocol
from urllib.parse import quote

import anyio
import anyio.to_thread
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from stepguard.adapters.bearer import BearerValidator
from stepguard.adapters.cookies import DEVICE_COOKIE, SessionCookie, parse_cookies
from stepguard.adapters.decision_api import (
    DecideFacts,
    DecideRequest,
    DecideResponse,
    DecisionService,
    Facts,
    SubjectInfo,
)
from stepguard.adapters.http_context import (
    RequestHeaders,
    TrustedProxies,
    canonical_path_of,
    effective_method,
    is_identity_header,
    wants_html,
)
from stepguard.adapters.memo import Memo
from stepguard.adapters.rfc9470 import (
    STEP_UP_ERROR,
    describe,
    step_up_challenge,
    token_challenge,
)
from stepguard.asgi.remote import RemoteDecider
from stepguard.core.canonical import is_token, split_target, wire_host
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import BadRequest
from stepguard.service.guard import Check, Guard
from stepguard.service.runtime import Runtime, token_key
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
        # An allow's state is a function of the user record, rule, level and the event shown:
        # built once per combination (bounded), not per request.
        self._states: Memo[tuple[object, ...], StepguardState] = Memo(4096)
        self._by_check: Memo[int, tuple[Check, StepguardState]] = Memo(4096)

    def context(self, fields: Mapping[str, Any], host: str) -> RequestContext:
        """`DecisionService.context` of these checked fields, from readings made once (`host`
        is the canonical host already; the path's canonical form is memoised)."""
        return RequestContext(
            method=fields["method"], host=host, path=canonical_path_of(fields["path"]),
            scheme=fields["scheme"], query=fields["query"], client_ip=fields["client_ip"],
            user_agent=fields["user_agent"],
            device_id=self.service.devices.device_id(fields["device_cookie"]),
            action=fields["action"], attributes=dict(fields["attributes"]))

    async def decide(self, request: DecideRequest) -> DecideResponse:
        answer = self.service.decide_cached(request)  # cached session: no thread hop
        if answer is not None:
            return answer
        return await self._in_thread(request)

    async def evaluate(self, request: Facts) -> StepguardState | DecideResponse:
        """`decide`, but an allow of a cached session becomes its `StepguardState` directly
        (no response model built and read back): the middleware's hot path."""
        service = self.service
        if request.bearer is None:
            context = service.context(request)
            check = service.guard.check_cached_key(context, service.session_key(request))
            if check is not None:
                if check.decision.outcome is Outcome.ALLOW:
                    return self.allowed(check)
                return service.conclude(request, context, check)
        return await self._in_thread(request)

    def allowed(self, check: Check) -> StepguardState:
        """`allowed_state`, remembered per check (an allow the guard gives again is the same
        object) and per user record, rule, level and authentication event (all compared
        whole: any change is a new key); an allow by a grant is built each time."""
        again = self._by_check.get(id(check))
        if again is not None and again[0] is check:
            return again[1]
        decision = check.decision
        if decision.grant_id or check.user is None or check.state is None:
            return allowed_state(self.service, check)
        event = self.service.shown_event(decision, check.state)
        key = (check.user, decision.rule, decision.level, event)
        found = self._states.get(key)
        if found is None:
            found = allowed_state(self.service, check)
            self._states.put(key, found)
        self._by_check.put(id(check), (check, found))
        return found

    async def _in_thread(self, request: Facts) -> DecideResponse:
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
        # The names the portal sets (prefixed on https); all three when its scheme is unknown.
        self.session_cookie = SessionCookie(self.cookie, https=config.server.public_url.startswith(
            "https://") if config else None)
        self.proxies = TrustedProxies.parse(
            trusted_proxies if trusted_proxies is not None
            else (config.server.trusted_proxies if config else ()))
        self.portal_paths = tuple(portal_paths) if self.portal else ()
        self.exempt = tuple(exempt)
        self._portal_under = _Prefixes(self.portal_paths)
        self._exempt_under = _Prefixes(self.exempt)
        self.honour_overrides = (method_override or (
            config.server.method_override if config else "refuse")) == "honour"
        self._readings: Memo[tuple[object, ...], Facts] = Memo(4096)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if any(_identity_name(name) for name, _ in headers):
            scope["headers"] = [(k, v) for k, v in headers if not _identity_name(k)]
        path = scope["path"]
        if self.portal is not None and self._portal_under(path):
            await self.portal(scope, receive, send)
            return
        if self._exempt_under(path):
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
            decider = self.decider
            if isinstance(decider, EmbeddedDecider):
                answer: StepguardState | DecideResponse = await decider.evaluate(request)
            else:
                assert isinstance(request, DecideRequest)  # remote: the validated model
                answer = await decider.decide(request)
        except BadRequest as exc:
            return bad_request(exc)
        except Exception:  # fail closed: whatever went wrong, nothing is allowed through
            log.exception("stepguard decision failed; answering 503")
            return _json({"error": "unavailable",
                          "detail": "the step-up service is unavailable"}, 503,
                         {"Retry-After": "5"})
        if isinstance(answer, StepguardState):
            return answer
        return self.render(answer, Headers(scope=scope))

    def request_for(self, scope: Scope, action: str,
                    attributes: Mapping[str, Any]) -> Facts:
        """The request to decide: for a plain request (no action, no attributes) decided in
        this process, read once per request head (bounded memo: a pure function of the scope's
        method, scheme, target, server, peer and headers; a refusal is never remembered)."""
        if action or attributes or not isinstance(self.decider, EmbeddedDecider):
            return self._request_for(scope, action, attributes)
        client, server = scope.get("client"), scope.get("server")
        key = (scope.get("method"), scope.get("scheme"), scope.get("raw_path"), scope["path"],
               scope.get("query_string"), client[0] if client else "",
               tuple(server) if server else None, *scope["headers"])
        try:
            found = self._readings.get(key)
        except TypeError:  # headers as lists: read each time
            return self._request_for(scope, action, attributes)
        if found is None:
            found = self._request_for(scope, action, attributes)
            self._readings.put(key, found)
        return found

    def _request_for(self, scope: Scope, action: str,
                     attributes: Mapping[str, Any]) -> Facts:
        """The request to decide. Embedded, its fields are checked here in plain Python against
        the model's own constraints (`check_fields`) and the model is only constructed; remote,
        the model validates them too before they go on the wire."""
        headers = RequestHeaders(scope["headers"])
        cookies = parse_cookies(scope["headers"])
        peer = scope["client"][0] if scope.get("client") else ""
        query = scope.get("query_string", b"").decode("latin-1")
        path, _ = split_target(_raw_path(scope) + (f"?{query}" if query else ""))
        method = effective_method(scope.get("method", "GET"), headers=headers.items(),
                                  query=query, body=None, honour=self.honour_overrides)
        host = _host(scope, headers)
        canonical_host = _wire_host(host)  # refused (400) as forward-auth refuses it; memoised
        fields: dict[str, Any] = dict(
            method=method, host=host,
            path=path, scheme="https" if scope["scheme"] in ("https", "wss") else "http",
            query=query, client_ip=self._client_ip(peer, headers),
            user_agent=headers.get("user-agent", "")[:512],
            device_cookie=cookies.get(DEVICE_COOKIE, "")[:256], action=action,
            attributes={k: _scalar(v) for k, v in attributes.items()},
            session_token=self.session_cookie.token(cookies),
            bearer=self._bearer(headers), return_url=None)
        problem = check_fields(fields)
        if problem is not None:
            raise BadRequest(f"the request cannot be decided: {problem}")
        if isinstance(self.decider, EmbeddedDecider):
            return DecideFacts(**fields, context=self.decider.context(fields, canonical_host),
                               session_key=token_key(fields["session_token"]))
        try:
            return DecideRequest(**fields)
        except ValidationError as exc:
            raise BadRequest(f"the request cannot be decided: {_first_error(exc)}") from None

    def _client_ip(self, peer: str, headers: RequestHeaders) -> str:
        return _ip_or_empty(self.proxies.client_ip(peer, headers.get("x-forwarded-for")))

    def _bearer(self, headers: RequestHeaders) -> str | None:
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
                         {"WWW-Authenticate": token_challenge(answer.token_error,
                                                              describe(answer.reasons))})
        if answer.challenge_url and wants_html(headers):
            return Response(status_code=303, headers={"Location": answer.challenge_url})
        return rfc9470(answer)


def bad_request(exc: BadRequest) -> Response:
    """The 400 for a request Stepguard cannot read the way the application will."""
    return _json({"error": "bad_request", "detail": str(exc)}, 400)


def rfc9470(answer: DecideResponse) -> Response:
    """`401` + `WWW-Authenticate: Bearer error="insufficient_user_authentication"` (RFC 9470)."""
    body = {"error": STEP_UP_ERROR, "reasons": answer.reasons,
            "challenge_url": answer.challenge_url, "level": answer.level,
            "max_age": answer.max_age, "bound_values": answer.bound_values}
    headers = {"WWW-Authenticate": step_up_challenge(answer.reasons, acr_values=answer.acr,
                                                     max_age=answer.max_age,
                                                     challenge_url=answer.challenge_url)}
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


def allowed_state(service: DecisionService, check: Check) -> StepguardState:
    """What an allowed request may rely on, straight from the decision (the same values
    `StepguardState.of` reads from a `DecideResponse`)."""
    decision = check.decision
    subject = service.subject(decision, check.state if check.user else None,
                              check.user.username if check.user else "")
    grant = (GrantInfo(decision.grant_id, bool(decision.consume_grant))
             if decision.grant_id else None)
    return StepguardState(rule=decision.rule, level=decision.level.label,
                          acr=service.acr(decision.level),
                          amr=tuple(subject.amr) if subject else (),
                          auth_time=subject.auth_time if subject else None, subject=subject,
                          grant=grant)


_HOST = re.compile(r"[^\s/@\\]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ACTION = re.compile(r"([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)?")
_LIMITS = {"method": 16, "host": 261, "path": 4096, "query": 4096, "client_ip": 45,
           "user_agent": 512, "device_cookie": 256, "action": 128, "session_token": 256,
           "bearer": 8192}


def check_fields(fields: Mapping[str, Any]) -> str | None:
    """The first way `fields` break `DecideRequest`'s constraints (None when they keep them),
    checked without building the model: the embedded middleware's hot path (method and host
    answers memoised; action and attributes checked only when given)."""
    for name, limit in _LIMITS.items():
        value = fields.get(name)
        if value is not None and len(value) > limit:
            return f"{name}: at most {limit} characters"
    if not _is_method(fields["method"]):
        return "method: not an HTTP method token"
    if not _is_host(fields["host"]):
        return "host: not a host"
    if not fields["path"].startswith("/"):
        return "path: must start with /"
    if fields["action"] and not _ACTION.fullmatch(fields["action"]):
        return "action: not an action name"
    attributes = fields["attributes"]
    if not attributes:
        return None
    if len(attributes) > 64:
        return "attributes: at most 64"
    for key, value in attributes.items():
        if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key):
            return f"attributes.{key}: not an identifier"
        if isinstance(value, float) and not math.isfinite(value):
            return f"attributes.{key}: not a finite number"
        if isinstance(value, str) and len(value) > 1024:
            return f"attributes.{key}: at most 1024 characters"
    return None


@lru_cache(maxsize=256)
def _is_method(text: str) -> bool:
    return is_token(text)


@lru_cache(maxsize=4096)
def _is_host(text: str) -> bool:
    return _HOST.fullmatch(text) is not None


_wire_host = lru_cache(maxsize=4096)(wire_host)  # pure; a refusal is raised each time


def _portal_app(runtime: Runtime) -> ASGIApp:
    from stepguard.gateway import create_app

    return create_app(runtime)


class _Prefixes:
    """Whether a path is one of `prefixes` or under it (`/account` and `/account/…`, not
    `/accounts`), with the prefixes read once."""

    __slots__ = ("exact", "starts")

    def __init__(self, prefixes: Iterable[str]) -> None:
        prefixes = tuple(prefixes)
        self.exact = frozenset(p.rstrip("/") for p in prefixes)
        self.starts = tuple(p if p.endswith("/") else p + "/" for p in prefixes)

    def __call__(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.starts)


@lru_cache(maxsize=2048)
def _identity_name(name: bytes) -> bool:
    """`is_identity_header` of a raw header name (the same few names come on every request)."""
    return is_identity_header(name.decode("latin-1"))


def _host(scope: Scope, headers: RequestHeaders) -> str:
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


@lru_cache(maxsize=4096)
def _ip_or_empty(text: str) -> str:
    """The client's IP, or "" when the peer is not an IP (a Unix socket, a test client)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def _scalar(value: Any) -> Attribute:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_input=False, include_url=False)[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


def _json(body: object, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **(headers or {})})
