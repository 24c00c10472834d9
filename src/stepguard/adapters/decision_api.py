"""Decision API: `POST /api/v1/decide` for applications in any language (DESIGN.md §7).

JSON in (the request context, the user's session token or bearer token, attributes, a return
URL), JSON out (the decision with its reasons, what a step-up needs and where the user completes
it, and who the subject is when allowed). Clients authenticate with an API key
(`Authorization: Bearer sgk_…` or `X-Api-Key: sgk_…`, see `service.api_keys`). The OpenAPI 3.1
document at `GET /api/v1/openapi.json` is generated from the pydantic models below, so the spec
and the code cannot drift.

`DecisionService.decide` is the one translation between a `DecideRequest` and the decision flow
(`Guard.check`, `StepUp.start`); the ASGI middleware in embedded mode calls it directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepguard.adapters.bearer import BearerValidator, decide_bearer
from stepguard.adapters.cookies import DeviceCookies
from stepguard.adapters.http_context import canonical_path_of
from stepguard.core.canonical import canonical_host, canonical_method, loads_json
from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import valid_events
from stepguard.core.decision import Decision, Outcome
from stepguard.core.errors import BadRequest, StoreUnavailable, VerificationFailed
from stepguard.service.api_keys import ApiKeys
from stepguard.service.guard import Check, Guard
from stepguard.service.runtime import Runtime, token_key
from stepguard.service.stepup import StepUp
from stepguard.web.security import safe_return_url

DECIDE_PATH = "/api/v1/decide"
OPENAPI_PATH = "/api/v1/openapi.json"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_ACTION = r"^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)?$"
Scalar = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=1024)] | None


# ------------------------------------------------------------------------------------ models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DecideRequest(_Model):
    """One request to decide, as the application saw it."""

    method: str = Field(min_length=1, max_length=16, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
                        examples=["POST"])
    host: str = Field(min_length=1, max_length=261, pattern=r"^[^\s/@\\]+$",
                      examples=["bank.example.com"])
    path: str = Field(min_length=1, max_length=4096, pattern=r"^/", examples=["/transfers"],
                      description="the raw (still percent-encoded) path; Stepguard canonicalises "
                                  "it and answers 400 when it is ambiguous")
    scheme: Literal["http", "https"] = "https"
    query: str = Field("", max_length=4096)
    client_ip: str = Field("", max_length=45, description="the end user's IP address")
    user_agent: str = Field("", max_length=512)
    device_cookie: str = Field("", max_length=256,
                               description="the signed stepguard_device cookie, if the app sees it")
    action: str = Field("", max_length=128, pattern=_ACTION, examples=["payments.transfer"])
    attributes: dict[Annotated[str, Field(pattern=_IDENTIFIER)], Scalar] = Field(
        default_factory=dict, max_length=64, examples=[{"amount": 100, "payee": "Bob"}],
        description="values the policy's conditions and bindings use (amount, payee, ...)")
    session_token: str | None = Field(None, max_length=256,
                                      description="the user's Stepguard session cookie value")
    bearer: str | None = Field(None, max_length=8192,
                               description="an OAuth access token (JWT) instead of a session")
    return_url: str | None = Field(None, max_length=4096,
                                   description="where the user returns after a step-up")

    @field_validator("client_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        if value:
            ipaddress.ip_address(value)
        return value


class SubjectInfo(_Model):
    """The signed-in user and how (and when) they last proved it at the level reached."""

    id: str
    username: str
    name: str
    email: str
    groups: list[str]
    acr: str | None = Field(description="the acr URI of the level reached")
    amr: list[str] = Field(description="RFC 8176 method references of that authentication")
    auth_time: int | None = Field(description="epoch seconds of that authentication")


class DecideResponse(_Model):
    """The decision, with what a step-up needs and where the user completes it."""

    decision: Literal["allow", "step_up", "deny"]
    rule: str
    reasons: list[str]
    level: str | None = Field(description="allow: the level reached; step_up: the level needed")
    acr: str | None = Field(description="the acr URI of `level` (RFC 9470 acr_values)")
    max_age: int | None = Field(description="step_up: seconds the proof may be old (0 = now)")
    methods: list[str] = Field(description="step_up: the factors allowed (empty = any)")
    single_use: bool
    scope: str | None
    bound_values: dict[str, str] = Field(description="step_up: the bound values to show the user")
    login: bool = Field(description="step_up: the user must sign in first")
    challenge_url: str | None = Field(description="step_up: where the user completes it")
    token_error: Literal["invalid_token"] | None = Field(
        description="the bearer token itself was refused (RFC 6750)")
    grant_id: str | None = Field(description="allow: the grant that satisfied the requirement")
    consumed_grant: bool = Field(description="allow: a single-use grant was spent on this request")
    subject: SubjectInfo | None


@dataclass(frozen=True, slots=True)
class DecideFacts:
    """`DecideRequest`'s fields without the model, for a caller that checked them against its
    constraints itself (the embedded middleware, see `asgi.middleware.check_fields`): building
    and validating the model is the costliest step of its hot path. `context`, when given, is
    the one `DecisionService.context` would build from these fields (the middleware builds it
    from the same readings, memoised, instead of parsing them twice)."""

    method: str
    host: str
    path: str
    scheme: Literal["http", "https"]
    query: str
    client_ip: str
    user_agent: str
    device_cookie: str
    action: str
    attributes: dict[str, Any]
    session_token: str | None
    bearer: str | None
    return_url: str | None
    context: RequestContext | None = None  # the canonical context, when the caller built it
    session_key: str | None = None  # the session token's hash, when the caller computed it


Facts = DecideRequest | DecideFacts


class ErrorResponse(_Model):
    error: str
    detail: str | list[dict[str, str]] = ""


# ------------------------------------------------------------------------------------ service


class DecisionService:
    """`DecideRequest` → decision flow → `DecideResponse` (blocking: call it in a thread)."""

    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp, *,
                 bearer_validator: BearerValidator | None = None) -> None:
        self.rt, self.guard, self.stepup = runtime, guard, stepup
        self.bearer_validator = bearer_validator
        self.devices = DeviceCookies(runtime.cookie_key)
        public = urlsplit(runtime.config.server.public_url)
        self.base = runtime.config.server.public_url.rstrip("/")
        self.domains = [*runtime.config.portal.protected_domains, public.netloc]

    def context(self, request: Facts) -> RequestContext:
        """The canonical request context (`BadRequest` when method, host or path is ambiguous)."""
        if isinstance(request, DecideFacts) and request.context is not None:
            return request.context
        return RequestContext(
            method=canonical_method(request.method), host=_canonical_host(request.host),
            path=_canonical_path(request.path), scheme=request.scheme, query=request.query,
            client_ip=request.client_ip, user_agent=request.user_agent,
            device_id=self.devices.device_id(request.device_cookie),
            action=request.action, attributes=dict(request.attributes))

    def session_key(self, request: Facts) -> str | None:
        """The store's key of the request's session token (`token_key`), computed once."""
        if isinstance(request, DecideFacts) and request.session_key is not None:
            return request.session_key
        return token_key(request.session_token)

    def decide(self, request: Facts) -> DecideResponse:
        context = self.context(request)
        if request.bearer is not None:
            return self._decide_bearer(request, context)
        return self.conclude(request, context, self.guard.check(context, request.session_token))

    def decide_cached(self, request: DecideRequest) -> DecideResponse | None:
        """The same answer without blocking I/O when the session is cached (see
        `Guard.check_cached`): safe on the event loop. None means: call `decide` in a thread."""
        if request.bearer is not None:
            return None
        context = self.context(request)
        check = self.guard.check_cached(context, request.session_token)
        return None if check is None else self.conclude(request, context, check)

    def conclude(self, request: Facts, context: RequestContext, check: Check) -> DecideResponse:
        """After the decision: begin the step-up it asks for (a challenge is stored now; never
        from `Guard.check_cached`'s answers, which need none), then the answer."""
        url = self.begin(request, context, check)
        return self.answer(check, challenge_url=url)

    def begin(self, request: Facts, context: RequestContext, check: Check) -> str | None:
        """The URL where a step-up continues (`StepUp.begin`); None for an allow or a deny."""
        if check.decision.outcome is not Outcome.STEP_UP:
            return None
        return self.base + self.stepup.begin(check.decision, context, check.session,
                                             return_url=self.return_url(request, context))

    def answer(self, check: Check, *, challenge_url: str | None = None) -> DecideResponse:
        """The response for a decision (renders only)."""
        state = check.session.state(check.subject) if check.session and check.subject else None
        username = check.user.username if check.user else ""
        return self._response(check.decision, state, username, challenge_url=challenge_url)

    def _decide_bearer(self, request: Facts, context: RequestContext) -> DecideResponse:
        """The bearer flow of `adapters.bearer` (validation, acr/amr/auth_time, token grants,
        audit); `IssuerUnavailable` propagates as a `StoreUnavailable` (503)."""
        check = decide_bearer(self.guard, context, f"Bearer {request.bearer}",
                              validator=self.bearer_validator)
        token_error: Literal["invalid_token"] | None = (
            "invalid_token" if check.error is not None else None)
        username = check.subject.name if check.subject else ""
        return self._response(check.decision, check.session, username, token_error=token_error)

    def return_url(self, request: Facts, context: RequestContext) -> str:
        """The caller's return URL if it is on a protected domain; else the request's own URL."""
        query = f"?{context.query}" if context.query else ""
        own = f"{context.scheme}://{request.host}{context.path}{query}"
        fallback = safe_return_url(own, protected_domains=self.domains, default="/account")
        return safe_return_url(request.return_url, protected_domains=self.domains,
                               default=fallback)

    def _response(self, decision: Decision, state: SessionState | None, username: str, *,
                  challenge_url: str | None = None,
                  token_error: Literal["invalid_token"] | None = None) -> DecideResponse:
        requirement = decision.requirement
        stepping = decision.outcome is Outcome.STEP_UP and requirement is not None
        level = requirement.level if stepping and requirement else decision.level
        allowed = decision.outcome is Outcome.ALLOW
        return DecideResponse(
            decision=decision.outcome.value, rule=decision.rule, reasons=list(decision.reasons),
            level=level.label if allowed or stepping else None,
            acr=self.acr(level) if allowed or stepping else None,
            max_age=_seconds(requirement.max_age) if stepping and requirement else None,
            methods=sorted(requirement.methods) if stepping and requirement else [],
            single_use=bool(stepping and requirement and requirement.single_use),
            scope=decision.scope or None, bound_values=dict(decision.bound_values),
            login=decision.login, challenge_url=challenge_url, token_error=token_error,
            grant_id=decision.grant_id or None, consumed_grant=bool(decision.consume_grant),
            subject=self.subject(decision, state, username) if allowed else None)

    def acr(self, level: Any) -> str | None:
        settings = self.rt.policy.levels.get(level)
        return settings.acr if settings else None

    def subject(self, decision: Decision, state: SessionState | None,
                username: str) -> SubjectInfo | None:
        """Who was allowed, and how and when they last proved it at the level reached."""
        if state is None:
            return None
        event = self.shown_event(decision, state)
        return _subject_info(state.subject, username, self.acr(decision.level),
                             event.amr if event else (), event.at if event else None)

    def shown_event(self, decision: Decision, state: SessionState) -> AuthEvent | None:
        """The authentication an allow reports: the newest live event at the level reached."""
        events = [e for e in valid_events(self.rt.policy.levels, state, self.rt.now())
                  if e.level >= decision.level]
        return max(events, key=lambda e: e.at, default=None)


_canonical_host = lru_cache(maxsize=4096)(canonical_host)  # pure; refusals are not remembered
_canonical_path = canonical_path_of


def _subject_info(subject: Subject, username: str, acr: str | None, amr: Sequence[str],
                  at: float | None) -> SubjectInfo:
    # Built from the store's own values: no validation to run (model_construct, cheap).
    return SubjectInfo.model_construct(
        id=subject.id, username=username or subject.name, name=subject.name,
        email=subject.email, groups=sorted(subject.groups), acr=acr, amr=list(amr),
        auth_time=int(at) if at is not None else None)


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


# ------------------------------------------------------------------------------------ HTTP


def decision_api_routes(runtime: Runtime, guard: Guard, stepup: StepUp, *,
                        bearer_validator: BearerValidator | None = None) -> list[Route]:
    """`POST /api/v1/decide` and `GET /api/v1/openapi.json` (none when `api.enabled` is off)."""
    if not runtime.config.api.enabled:
        return []
    endpoint = DecideEndpoint(runtime, DecisionService(runtime, guard, stepup,
                                                       bearer_validator=bearer_validator))

    async def openapi(_: Request) -> Response:
        return JSONResponse(openapi_document())

    return [Route(DECIDE_PATH, endpoint.handle, methods=["POST"]),
            Route(OPENAPI_PATH, openapi, methods=["GET"])]


class DecideEndpoint:
    def __init__(self, runtime: Runtime, service: DecisionService) -> None:
        self.rt, self.service = runtime, service
        self.keys = ApiKeys(runtime)
        self.max_body = runtime.config.api.max_body

    async def handle(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.keys.authenticate, presented_key(request.headers))
        except VerificationFailed:
            return _error("invalid_api_key", "a valid API key is required", 401,
                          {"WWW-Authenticate": 'Bearer realm="stepguard-decision-api"'})
        except StoreUnavailable:
            return _error("unavailable", "the store is unavailable", 503, {"Retry-After": "5"})
        parsed = await self._parse(request)
        if isinstance(parsed, Response):
            return parsed
        return await self._decide(parsed)

    async def _parse(self, request: Request) -> DecideRequest | Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return _error("unsupported_media_type", "send application/json", 415)
        body = await _bounded_body(request, self.max_body)
        if body is None:
            return _error("too_large", f"the body exceeds {self.max_body} bytes", 413)
        try:
            loads_json(body)  # a key given twice (`amount`) is refused, never read as the last
            return DecideRequest.model_validate_json(body)
        except BadRequest as exc:
            return _error("invalid_request", str(exc), 400)
        except ValidationError as exc:
            return _error("invalid_request", _problems(exc), 400)

    async def _decide(self, parsed: DecideRequest) -> Response:
        try:
            answer = await run_in_threadpool(self.service.decide, parsed)
        except BadRequest as exc:
            return _error("bad_request", str(exc), 400)
        except StoreUnavailable:
            return _error("unavailable", "the store is unavailable", 503, {"Retry-After": "5"})
        return Response(answer.model_dump_json(), 200, media_type="application/json",
                        headers={"Cache-Control": "no-store"})


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key from `X-Api-Key` or `Authorization: Bearer` (None when neither is sent)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value else None


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    """Validation errors without the input values (a token must never be echoed)."""
    return [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_input=False, include_url=False)][:20]


def _error(error: str, detail: str | list[dict[str, str]], status: int,
           headers: Mapping[str, str] | None = None) -> Response:
    body = ErrorResponse(error=error, detail=detail).model_dump_json()
    return Response(body, status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **(headers or {})})


# ------------------------------------------------------------------------------------ OpenAPI


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the decision API, generated from the models above."""
    _, schemas = models_json_schema(
        [(DecideRequest, "validation"), (DecideResponse, "serialization"),
         (ErrorResponse, "serialization")], ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stepguard decision API", "version": "1",
                 "description": "Ask Stepguard whether a request may proceed, needs a step-up, "
                                "or is denied."},
        "paths": {DECIDE_PATH: {"post": _decide_operation()},
                  OPENAPI_PATH: {"get": _openapi_operation()}},
        "components": {"schemas": schemas["$defs"], "securitySchemes": {
            "bearerKey": {"type": "http", "scheme": "bearer",
                          "description": "an API key sgk_<id>_<secret>"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}},
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _decide_operation() -> dict[str, Any]:
    errors: dict[str, str] = {"400": "malformed or ambiguous request",
                              "401": "missing, wrong or revoked API key",
                              "413": "body too large", "415": "not application/json",
                              "503": "the store is unavailable: fail closed"}
    responses = {"200": _json("DecideResponse", "the decision"),
                 **{code: _json("ErrorResponse", text) for code, text in errors.items()}}
    return {"operationId": "decide", "summary": "Decide one request",
            "security": [{"bearerKey": []}, {"apiKeyHeader": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/DecideRequest"}}}},
            "responses": responses}


def _openapi_operation() -> dict[str, Any]:
    return {"operationId": "openapi", "summary": "This document",
            "responses": {"200": {"description": "the OpenAPI document", "content": {
                "application/json": {"schema": {"type": "object"}}}}}}

