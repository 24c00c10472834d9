"""Turn the plain request / session / risk / grant descriptions of policy tests and of
`stepguard policy explain` into core values. Times are relative to a fixed `now`.

A case describes a web request (`request`) or an agent's MCP tool call (`call: {server, tool,
arguments, definition}`), read exactly as the MCP door reads one (`core.toolcall`: what the door
refuses is a `bad_request` here too). A call's session defaults to an agent of `alice` (one
authentication event: the agent token's creation, aal1, factor `agent`); every grant of a call
case is bound to the digest of a whole call — its own `call` (the case's call unless given), as
the door binds what the human approved."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stepguard.core.canonical import canonical_host, canonical_method, canonical_path, split_target
from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.durations import parse_duration
from stepguard.core.errors import BadRequest
from stepguard.core.grant import Grant, binding_digest
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.core.risk import RiskAssessment, RiskSettings, Signal, risk_level
from stepguard.core.toolcall import call_context, call_digest, definition_digest, tool_call

FIXED_NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z: policy tests never read the clock
AGENT_FACTOR = "agent"  # an agent session's one event (service.agent_tokens)


class CaseError(ValueError):
    """A test case or explain input that does not describe a request properly."""


@dataclass(frozen=True)
class Case:
    request: RequestContext
    session: SessionState | None
    risk: RiskAssessment
    grants: tuple[Grant, ...]
    now: float


def build_case(
    spec: Mapping[str, Any], *, settings: RiskSettings | None = None, now: float = FIXED_NOW
) -> Case:
    """Core values for one case: `request` or `call`, optional `session`, `risk` and
    `grants`."""
    call = spec.get("call")
    if call is not None:
        if spec.get("request") is not None:
            raise CaseError("give either a request or a call, not both")
        call = _mapping(call, "call")
        request = build_call(call)
        session = build_session(spec.get("session", {"agent": True}), now=now)
    else:
        request = build_request(_mapping(spec.get("request"), "request"))
        session = build_session(spec.get("session"), now=now)
    risk = build_risk(spec.get("risk"), settings or RiskSettings())
    grants = tuple(_grant(g, request, session, now, call) for g in spec.get("grants") or [])
    return Case(request, session, risk, grants, now)


def build_call(spec: Mapping[str, Any]) -> RequestContext:
    """The request context of a tool call as the MCP door builds it (`BadRequest` for what the
    door refuses); `definition` is the tool as its server lists it (absent: unlisted)."""
    call = tool_call(str(spec.get("server", "")),
                     {"name": spec.get("tool"), "arguments": spec.get("arguments", {})})
    definition = spec.get("definition")
    if definition is not None:
        definition = _mapping(definition, "call.definition")
    digest = call_digest(call, definition=definition_digest(definition))
    return call_context(call, client_ip=str(spec.get("ip", "")),
                        user_agent=str(spec.get("client", "")), digest=digest)


def build_request(spec: Mapping[str, Any]) -> RequestContext:
    if "sql" in spec:  # a statement through the postgres door: {sql: "...", database: app}
        return _statement_request(spec)
    raw_path, query = split_target(str(spec.get("path", "/")))
    return RequestContext(
        method=canonical_method(str(spec.get("method", "GET"))),
        host=canonical_host(str(spec.get("host", "localhost"))),
        path=canonical_path(raw_path),
        scheme=str(spec.get("scheme", "https")),
        query=str(spec.get("query", query)),
        client_ip=str(spec.get("ip", "")),
        user_agent=str(spec.get("user_agent", "")),
        device_id=str(spec.get("device", "")),
        action=str(spec.get("action", "")),
        attributes=dict(_mapping(spec.get("attributes", {}), "request.attributes")),
    )


def _statement_request(spec: Mapping[str, Any]) -> RequestContext:
    """A SQL case; what the gateway refuses whatever the policy says is a `bad_request`."""
    from stepguard.pgwire.classify import Unparseable, classify, statement_context

    try:
        statements = classify(str(spec["sql"])).statements
    except Unparseable as exc:
        raise BadRequest(str(exc)) from None
    if len(statements) != 1:
        raise CaseError("request.sql: expected exactly one statement per case")
    if statements[0].refusal:
        raise BadRequest(statements[0].refusal)
    return statement_context(statements[0].text, database=str(spec.get("database", "")),
                             client_ip=str(spec.get("ip", "")), statement=statements[0])


def build_session(spec: Any, *, now: float) -> SessionState | None:
    """`null` = anonymous; else user, groups, and either `events` or a shorthand level/age."""
    if spec is None:
        return None
    spec = _mapping(spec, "session")
    subject = Subject(
        id=str(spec.get("user", "alice")),
        name=str(spec.get("name", "")),
        email=str(spec.get("email", "")),
        groups=frozenset(spec.get("groups", [])),
    )
    if spec.get("agent"):  # an agent: the token's creation is its only event
        spec = {**spec, "events": [{"factor": AGENT_FACTOR, "level": "aal1",
                                    "age": spec.get("age", 0)}]}
    events = spec.get("events") or [{k: spec[k] for k in ("factor", "level", "age") if k in spec}]
    built = tuple(_event(_mapping(e, "session.events[]"), now) for e in events)
    created = now - max((now - e.at for e in built), default=0.0)
    idle = parse_duration(spec.get("idle", 0))
    return SessionState(
        id=str(spec.get("id", "s1")),
        subject=subject,
        created=created,
        last_seen=now - idle,
        ip=str(spec.get("ip", "")),
        user_agent=str(spec.get("user_agent", "")),
        events=built,
    )


def _event(spec: Mapping[str, Any], now: float) -> AuthEvent:
    level = Level.parse(str(spec.get("level", "aal1")))
    factor = str(spec.get("factor", "password" if level is Level.AAL1 else "totp"))
    if factor == AGENT_FACTOR and level is Level.AAL1:
        amr: tuple[str, ...] = (AGENT_FACTOR,)
    elif factor in FACTOR_AMR:
        amr = FACTOR_AMR[factor]
    else:
        raise CaseError(f"unknown factor {factor!r}")
    return AuthEvent(factor=factor, amr=amr, level=level,
                     at=now - parse_duration(spec.get("age", 0)))


def build_risk(spec: Any, settings: RiskSettings) -> RiskAssessment:
    """`signals: [names]` (scored with the configured weights) and/or an explicit `score`."""
    if spec is None:
        return RiskAssessment()
    spec = _mapping(spec, "risk")
    signals = tuple(
        Signal(n, settings.weights.get(n, 0), _signal_reason(n)) for n in spec.get("signals", [])
    )
    score = int(spec.get("score", min(100, sum(s.weight for s in signals))))
    level = str(spec.get("level", risk_level(score, settings.thresholds)))
    return RiskAssessment(score, level, signals)


def _signal_reason(name: str) -> str:
    return f"Risk signal: {name.replace('_', ' ')}."


def _grant(spec: Any, request: RequestContext, session: SessionState | None, now: float,
           call: Mapping[str, Any] | None = None) -> Grant:
    spec = _mapping(spec, "grants[]")
    if session is None:
        raise CaseError("a grant needs a session")
    binding = ""
    if call is not None:  # what the human approved: a whole call, this one unless given
        binding = build_call({**call, **_mapping(spec.get("call", {}), "grants[].call")}
                             ).call_digest
    elif spec.get("bind"):
        binding = binding_digest(
            method=request.method,
            path=request.path,
            fields=spec["bind"],
            attributes=spec.get("attributes", request.attributes),
        )
    granted = now - parse_duration(spec.get("age", 0))
    factor = str(spec.get("factor", "totp"))
    return Grant(
        id=str(spec.get("id", "g1")),
        subject_id=session.subject.id,
        session_id=session.id,
        scope=str(spec["scope"]),
        level=Level.parse(str(spec.get("level", "aal2"))),
        amr=FACTOR_AMR.get(factor, ()),
        granted_at=granted,
        expires_at=granted + parse_duration(spec.get("ttl", "5m")),
        single_use=bool(spec.get("single_use")),
        binding=binding,
        factor=factor,
    )


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CaseError(f"expected a mapping for {what}")
    return value
