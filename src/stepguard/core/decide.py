"""`decide()` and `explain()`: the whole decision, from values, with no clock and no I/O.

The first rule whose match and condition hold decides; when none does, the default decides. A
condition that cannot be evaluated for this request (a missing attribute, say) counts as holding:
the stricter rule applies (fail closed). A requirement is met by the session's authentication
events, unless it needs a grant (scope, single use, binding or `max_age: 0`), in which case only
a grant for this subject, session, scope and binding digest will do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decision import Decision, Outcome, Requirement
from stepguard.core.durations import describe_duration
from stepguard.core.errors import EvaluationError
from stepguard.core.expression import EvalEnv
from stepguard.core.grant import Grant, binding_digest
from stepguard.core.levels import Level, LevelSettings
from stepguard.core.policy import Policy, Rule
from stepguard.core.reason import reason_values, render
from stepguard.core.risk import NO_RISK, RiskAssessment


@dataclass(slots=True)
class TraceStep:
    """One line of an explanation: a rule, whether it was looked at, matched, and why."""

    rule: str
    looked_at: bool
    matched: bool
    why: str


@dataclass(slots=True)
class Explanation:
    decision: Decision
    trace: list[TraceStep] = field(default_factory=list)


def decide(
    policy: Policy,
    context: RequestContext,
    session: SessionState | None = None,
    risk: RiskAssessment = NO_RISK,
    grants: Sequence[Grant] = (),
    now: float = 0.0,
) -> Decision:
    """Allow, step up or deny this request."""
    rule, failed = _select(policy, context, session, risk, now, None)
    decision = _apply(policy, rule, context, session, risk, grants, now, failed)
    if rule.report or policy.report:
        return _enforced(policy, decision, context, session, risk, grants, now)
    return decision


def explain(
    policy: Policy,
    context: RequestContext,
    session: SessionState | None = None,
    risk: RiskAssessment = NO_RISK,
    grants: Sequence[Grant] = (),
    now: float = 0.0,
) -> Explanation:
    """The same decision as `decide()`, with a trace of every rule and why it matched or not."""
    trace: list[TraceStep] = []
    rule, failed = _select(policy, context, session, risk, now, trace)
    decision = _apply(policy, rule, context, session, risk, grants, now, failed)
    if rule.report or policy.report:
        decision = _enforced(policy, decision, context, session, risk, grants, now)
    order = {r.name: r.position for r in policy.rules}
    trace.sort(key=lambda step: order.get(step.rule, len(order)))
    return Explanation(decision, trace)


def _enforced(
    policy: Policy,
    reported: Decision,
    context: RequestContext,
    session: SessionState | None,
    risk: RiskAssessment,
    grants: Sequence[Grant],
    now: float,
) -> Decision:
    """The decision enforced when a report-mode rule (or a report-mode policy) decided: the
    request passes (a whole policy in report mode) or gets what the policy decides without its
    report-mode rules (so a rule added in report mode never weakens the rules below it). The
    report-mode decision rides along as `shadow` when its outcome differs."""
    if policy.report:
        if reported.allowed:
            return reported
        level = _session_level(policy, session, now)
        return Decision(outcome=Outcome.ALLOW, rule=reported.rule, level=level, shadow=reported)
    assert policy.enforced is not None  # a report-mode rule exists
    live = decide(policy.enforced, context, session, risk, grants, now)
    return live if live.outcome is reported.outcome else replace(live, shadow=reported)


def _select(
    policy: Policy,
    context: RequestContext,
    session: SessionState | None,
    risk: RiskAssessment,
    now: float,
    trace: list[TraceStep] | None,
) -> tuple[Rule, bool]:
    if trace is None:
        return _select_fast(policy, context, session, risk, now)
    subject = session.subject if session is not None else None
    candidates = policy.candidates(context)
    _trace_skipped(policy, candidates, trace)
    env: EvalEnv | None = None
    for rule in candidates:
        if not _static_match(rule, context, subject, trace):
            continue
        if rule.when is None:
            _note(trace, rule, True, "matched")
            return rule, False
        if env is None:
            env = EvalEnv(request=context, session=session, risk=risk, now=now)
        try:
            holds = rule.when.evaluate(env)
        except EvaluationError as exc:
            why = f"condition could not be evaluated ({exc}); applied (fail closed)"
            _note(trace, rule, True, why)
            return rule, True
        if holds:
            _note(trace, rule, True, f"matched; condition {rule.when.source!r} holds")
            return rule, False
        _note(trace, rule, False, f"condition {rule.when.source!r} does not hold")
    _note(trace, policy.default, True, "no rule matched: the default applies")
    return policy.default, False


def _select_fast(
    policy: Policy,
    context: RequestContext,
    session: SessionState | None,
    risk: RiskAssessment,
    now: float,
) -> tuple[Rule, bool]:
    """`_select` without a trace: the same steps, inlined for the hot path."""
    subject = session.subject if session is not None else None
    env: EvalEnv | None = None
    for rule in policy.candidates(context):
        for check, _label in rule.checks:
            if not check(context, subject):
                break
        else:
            when = rule.when
            if when is None:
                return rule, False
            if env is None:
                env = EvalEnv(request=context, session=session, risk=risk, now=now)
            try:
                if when.evaluate(env):
                    return rule, False
            except EvaluationError:
                return rule, True
    return policy.default, False


def _static_match(
    rule: Rule, context: RequestContext, subject: Subject | None, trace: list[TraceStep] | None
) -> bool:
    for check, label in rule.checks:
        if not check(context, subject):
            _note(trace, rule, False, f"{label} does not match")
            return False
    return True


def _note(trace: list[TraceStep] | None, rule: Rule, matched: bool, why: str) -> None:
    if trace is not None:
        trace.append(TraceStep(rule.name, True, matched, why))


def _trace_skipped(policy: Policy, candidates: tuple[Rule, ...], trace: list[TraceStep]) -> None:
    looked = {id(r) for r in candidates}
    for rule in policy.rules:
        if id(rule) not in looked:
            trace.append(TraceStep(rule.name, False, False, "skipped by the index (host or path)"))


def _apply(
    policy: Policy,
    rule: Rule,
    context: RequestContext,
    session: SessionState | None,
    risk: RiskAssessment,
    grants: Sequence[Grant],
    now: float,
    failed: bool,
) -> Decision:
    if rule.deny is not None:
        return Decision(outcome=Outcome.DENY, rule=rule.name,
                        reasons=(_text_of(rule.deny, context, risk),))
    requirement = rule.requirement
    if requirement is None:
        return _allowed(rule.name, "", _session_level(policy, session, now))
    if session is None:
        reasons = (_reason(rule, requirement, context, risk), "Sign in to continue.")
        return Decision(
            outcome=Outcome.STEP_UP,
            rule=rule.name,
            reasons=_dedupe(reasons),
            reason_texts=_reason_texts(requirement, context, risk),
            requirement=requirement,
            scope=_scope(rule, requirement),
            login=True,
        )
    return _judge(policy, rule, requirement, context, session, risk, grants, now, failed)


def _values(context: RequestContext, risk: RiskAssessment) -> dict[str, object]:
    return reason_values(context=context, risk=risk)


def _text_of(template: str, context: RequestContext, risk: RiskAssessment) -> str:
    """A rendered reason; the values are built only when the template has placeholders or
    escaped braces (`}}` is one brace even in a text without placeholders)."""
    if "{" in template or "}" in template:
        return render(template, _values(context, risk))
    return template


@lru_cache(maxsize=4096)
def _allowed(rule: str, scope: str, level: Level) -> Decision:
    """Allow decisions without a grant are the same every time: build each once."""
    return Decision(outcome=Outcome.ALLOW, rule=rule, scope=scope, level=level)


def _judge(
    policy: Policy,
    rule: Rule,
    requirement: Requirement,
    context: RequestContext,
    session: SessionState,
    risk: RiskAssessment,
    grants: Sequence[Grant],
    now: float,
    failed: bool,
) -> Decision:
    scope = _scope(rule, requirement)
    if not requirement.needs_grant:
        event = _satisfying_event(policy.levels, session, requirement, now)
        if event is not None:
            return _allowed(rule.name, scope, event.level)
    digest = _digest(requirement, context)
    grant = _satisfying_grant(session, requirement, scope, digest, grants, now)
    if grant is not None:
        return Decision(
            outcome=Outcome.ALLOW,
            rule=rule.name,
            scope=scope,
            binding=digest,
            grant_id=grant.id,
            consume_grant=grant.id if grant.single_use else "",
            level=grant.level,
        )
    reasons = _step_up_reasons(policy, rule, requirement, context, session, risk, now, failed)
    bound = tuple((name, _text(context.attributes.get(name))) for name in requirement.bind)
    return Decision(outcome=Outcome.STEP_UP, rule=rule.name, reasons=reasons,
                    reason_texts=_reason_texts(requirement, context, risk),
                    requirement=requirement, scope=scope, binding=digest, bound_values=bound)


def _scope(rule: Rule, requirement: Requirement) -> str:
    return requirement.scope or rule.name


def _digest(requirement: Requirement, context: RequestContext) -> str:
    if context.call_digest:  # the door binds every grant to the whole call it will execute
        return context.call_digest
    if not requirement.bind:
        return ""
    return binding_digest(
        method=context.method,
        path=context.path,
        fields=requirement.bind,
        attributes=context.attributes,
    )


def valid_events(
    levels: Mapping[Level, LevelSettings], session: SessionState, now: float
) -> list[AuthEvent]:
    """Events still inside their level's absolute and idle session lifetimes."""
    idle = now - session.last_seen
    return [e for e in session.events if _alive(levels.get(e.level), e, idle, now)]


def _alive(setting: LevelSettings | None, event: AuthEvent, idle: float, now: float) -> bool:
    if setting is None:
        return True
    return now - event.at <= setting.max_session and idle <= setting.idle


def _satisfying_event(
    levels: Mapping[Level, LevelSettings],
    session: SessionState,
    requirement: Requirement,
    now: float,
) -> AuthEvent | None:
    idle = now - session.last_seen
    for event in reversed(session.events):
        if event.level < requirement.level or not _alive(levels.get(event.level), event, idle, now):
            continue
        if requirement.methods and event.factor not in requirement.methods:
            continue
        if requirement.max_age is not None and now - event.at > requirement.max_age:
            continue
        return event
    return None


def _satisfying_grant(
    session: SessionState,
    requirement: Requirement,
    scope: str,
    digest: str,
    grants: Sequence[Grant],
    now: float,
) -> Grant | None:
    for grant in grants:
        if (
            grant.subject_id == session.subject.id
            and grant.session_id == session.id
            and grant.scope == scope
            and grant.expires_at > now
            and grant.level >= requirement.level
            and grant.binding == digest
            and (not requirement.methods or grant.factor in requirement.methods)
            and (not requirement.max_age or now - grant.granted_at <= requirement.max_age)
        ):
            return grant
    return None


def _session_level(policy: Policy, session: SessionState | None, now: float) -> Level:
    if session is None:
        return Level.AAL0
    events = valid_events(policy.levels, session, now)
    return max((e.level for e in events), default=Level.AAL0)


def _step_up_reasons(
    policy: Policy,
    rule: Rule,
    requirement: Requirement,
    context: RequestContext,
    session: SessionState,
    risk: RiskAssessment,
    now: float,
    failed: bool,
) -> tuple[str, ...]:
    reasons = [_reason(rule, requirement, context, risk)]
    if rule.uses_risk or risk.level in ("high", "critical"):
        reasons.extend(risk.reasons)
    reasons.append(_missing(policy, requirement, session, _scope(rule, requirement), now))
    if failed:
        reasons.append(
            "Some details of this request could not be checked, so it is treated as sensitive."
        )
    return _dedupe(reasons)


def _reason_texts(requirement: Requirement, context: RequestContext,
                  risk: RiskAssessment) -> tuple[tuple[str, str], ...]:
    """The rule's reason rendered in each language the policy gives it in (usually none)."""
    return tuple((language, _text_of(template, context, risk))
                 for language, template in requirement.reason_texts)


def _reason(
    rule: Rule, requirement: Requirement, context: RequestContext, risk: RiskAssessment
) -> str:
    if requirement.reason:
        return _text_of(requirement.reason, context, risk)
    if rule.name == "default" and requirement.level <= Level.AAL1:  # above: say what it needs
        return "Sign in to continue."
    return (f"This action needs {LEVEL_NEED[requirement.level]}"
            f"{NEED_EXAMPLES.get(requirement.level, '')}.")


# Assurance levels in plain words (people never see "aal2"). NEED_EXAMPLES is said when the
# rule names no methods (with methods, the methods are the example).
LEVEL_HAVE = {Level.AAL0: "nothing yet", Level.AAL1: "your password only",
              Level.AAL2: "a second proof", Level.AAL3: "a passkey or security key"}
LEVEL_NEED = {Level.AAL0: "nothing", Level.AAL1: "a sign-in", Level.AAL2: "a second proof",
              Level.AAL3: "a passkey or security key that checks your PIN or fingerprint"}
NEED_EXAMPLES = {Level.AAL2: ", such as a passkey or a code from your authenticator app"}


def _missing(
    policy: Policy, requirement: Requirement, session: SessionState, scope: str, now: float
) -> str:
    """The true reason no authentication event or grant meets `requirement`: the first
    requirement kind the session does not meet, in the order a proof is judged."""
    if requirement.single_use:
        return "Confirm this specific request; the approval is used once."
    if requirement.max_age == 0:
        return "This needs a proof made just now, for this request."
    strong = [e for e in valid_events(policy.levels, session, now) if e.level >= requirement.level]
    if not strong:
        best = _session_level(policy, session, now)
        return (
            f"You signed in with {LEVEL_HAVE[best]}; this needs {LEVEL_NEED[requirement.level]}"
            f"{_methods_text(requirement) or NEED_EXAMPLES.get(requirement.level, '')}."
        )
    usable = [e for e in strong if not requirement.methods or e.factor in requirement.methods]
    if not usable:
        return (
            f"This needs a proof{_methods_text(requirement)}; "
            "your recent proofs used other methods."
        )
    if requirement.max_age is not None and all(now - e.at > requirement.max_age for e in usable):
        return (
            f"Your last sign-in at this level is older than "
            f"{describe_duration(requirement.max_age)}."
        )
    if requirement.bind:
        return (
            f"Approve exactly these values ({', '.join(requirement.bind)}); an approval covers "
            "only the values it was given for."
        )
    if requirement.scope is not None:
        return (
            f"This action needs a confirmation of its own ({scope}); an earlier confirmation "
            "does not cover it."
        )
    return f"This needs a fresh proof{_methods_text(requirement)}."


def _methods_text(requirement: Requirement) -> str:
    if not requirement.methods:
        return ""
    names = {
        "webauthn": "a passkey",
        "totp": "an authenticator code",
        "push": "a push approval",
        "recovery": "a recovery code",
        "password": "your password",
    }
    return " with " + " or ".join(names[m] for m in sorted(requirement.methods))


def _text(value: object) -> str:
    return "(not given)" if value is None else str(value)


def _dedupe(reasons: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r for r in reasons if r))
