"""decide(): first match wins, requirements met by events or grants, fail closed, explain."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepguard.config.load import load_policy
from stepguard.core.canonical import canonical_host, canonical_path
from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import decide, explain
from stepguard.core.decision import Outcome
from stepguard.core.errors import BadRequest
from stepguard.core.grant import Grant, binding_digest
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.core.policy import compile_policy
from stepguard.core.risk import RiskAssessment, Signal

NOW = 1_800_000_000.0
POLICY = load_policy(Path(__file__).parents[2] / "examples" / "policy.yaml")
STRENGTH = {Outcome.ALLOW: 0, Outcome.STEP_UP: 1, Outcome.DENY: 2}


def ctx(path: str = "/dashboard", method: str = "GET", **kw: object) -> RequestContext:
    return RequestContext(method=method, host="bank.example.com", path=path, **kw)  # type: ignore[arg-type]


def session(
    *events: tuple[str, Level, float],
    idle: float = 0,
    groups: frozenset[str] = frozenset(),
    sid: str = "s1",
) -> SessionState:
    built = tuple(AuthEvent(factor=f, amr=FACTOR_AMR[f], level=lvl, at=NOW - age)
                  for f, lvl, age in events)
    return SessionState(id=sid, subject=Subject(id="alice", groups=groups), created=NOW - 7200,
                        last_seen=NOW - idle, events=built)


PASSWORD = ("password", Level.AAL1, 600.0)


def test_anonymous_needs_sign_in() -> None:
    decision = decide(POLICY, ctx(), None, now=NOW)
    assert decision.outcome is Outcome.STEP_UP and decision.login
    assert "Sign in to continue." in decision.reasons


def test_public_route_allows_anonymous() -> None:
    decision = decide(POLICY, ctx("/static/app.css"), None, now=NOW)
    assert decision.allowed and decision.level is Level.AAL0


def test_password_session_gets_dashboard() -> None:
    decision = decide(POLICY, ctx(), session(PASSWORD), now=NOW)
    assert decision.allowed and decision.rule == "default" and decision.level is Level.AAL1


def test_freshness_is_per_route() -> None:
    fresh = session(PASSWORD, ("webauthn", Level.AAL3, 60.0))
    stale = session(PASSWORD, ("webauthn", Level.AAL3, 16 * 60.0))
    assert decide(POLICY, ctx("/customers/export"), fresh, now=NOW).allowed
    decision = decide(POLICY, ctx("/customers/export"), stale, now=NOW)
    assert decision.outcome is Outcome.STEP_UP
    assert any("older than 15 minutes" in r for r in decision.reasons)


def test_methods_restrict_which_factor_counts() -> None:
    totp = session(PASSWORD, ("totp", Level.AAL3, 60.0))
    decision = decide(POLICY, ctx("/customers/export"), totp, now=NOW)
    assert decision.outcome is Outcome.STEP_UP
    assert decision.requirement is not None and decision.requirement.methods == {"webauthn"}


def test_idle_session_loses_its_level() -> None:
    policy = compile_policy(
        {"rules": [{"name": "r", "match": {"paths": ["/x"]}, "require": {"level": "aal2"}}]}
    )
    active = session(PASSWORD, ("totp", Level.AAL2, 600.0), idle=60)
    idle = session(PASSWORD, ("totp", Level.AAL2, 600.0), idle=3601)
    assert decide(policy, ctx("/x"), active, now=NOW).allowed
    decision = decide(policy, ctx("/x"), idle, now=NOW)
    assert decision.outcome is Outcome.STEP_UP
    assert any("You signed in with your password only" in r for r in decision.reasons)


def grant(
    scope: str,
    *,
    binding: str = "",
    single_use: bool = False,
    age: float = 10,
    ttl: float = 300,
    sid: str = "s1",
    subject: str = "alice",
    level: Level = Level.AAL2,
    factor: str = "totp",
) -> Grant:
    return Grant(
        id="g1",
        subject_id=subject,
        session_id=sid,
        scope=scope,
        level=level,
        amr=FACTOR_AMR[factor],
        granted_at=NOW - age,
        expires_at=NOW - age + ttl,
        single_use=single_use,
        binding=binding,
        factor=factor,
    )


def transfer(amount: object, payee: str) -> RequestContext:
    return ctx("/transfers", "POST", attributes={"amount": amount, "payee": payee})


def bound(amount: object, payee: str) -> str:
    return binding_digest(
        method="POST",
        path="/transfers",
        fields=("amount", "payee"),
        attributes={"amount": amount, "payee": payee},
    )


def test_single_use_grant_is_bound_to_the_transaction() -> None:
    s = session(PASSWORD)
    step_up = decide(POLICY, transfer(5000, "Bob"), s, now=NOW)
    assert step_up.outcome is Outcome.STEP_UP and step_up.binding == bound(5000, "Bob")
    assert dict(step_up.bound_values) == {"amount": "5000", "payee": "Bob"}
    assert "Approve a transfer of 5000 to Bob" in step_up.reasons
    good = grant("large-transfer", binding=bound("5000.00", "Bob"), single_use=True)
    allowed = decide(POLICY, transfer(5000, "Bob"), s, grants=[good], now=NOW)
    assert allowed.allowed and allowed.consume_grant == "g1"
    assert (
        decide(POLICY, transfer(9000, "Mallory"), s, grants=[good], now=NOW).outcome
        is Outcome.STEP_UP
    )


@pytest.mark.parametrize(
    "bad",
    [
        grant("large-transfer", binding=bound(5000, "Bob"), single_use=True, sid="other"),
        grant("large-transfer", binding=bound(5000, "Bob"), single_use=True, subject="mallory"),
        grant("admin", binding=bound(5000, "Bob"), single_use=True),
        grant("large-transfer", binding=bound(5000, "Bob"), single_use=True, age=400),
        grant("large-transfer", binding=bound(5000, "Bob"), single_use=True, level=Level.AAL1),
    ],
)
def test_grant_must_match_subject_session_scope_expiry_and_level(bad: Grant) -> None:
    assert (
        decide(POLICY, transfer(5000, "Bob"), session(PASSWORD), grants=[bad], now=NOW).outcome
        is Outcome.STEP_UP
    )


def test_a_condition_that_cannot_be_evaluated_applies_the_rule() -> None:
    explanation = explain(
        POLICY, ctx("/transfers", "POST", attributes={"amount": "lots"}), session(PASSWORD), now=NOW
    )
    assert explanation.decision.rule == "large-transfer"
    assert explanation.decision.outcome is Outcome.STEP_UP
    assert any("could not be checked" in r for r in explanation.decision.reasons)
    assert any("fail closed" in step.why for step in explanation.trace)


def test_risk_reasons_are_shown_and_critical_risk_denies() -> None:
    high = RiskAssessment(
        65,
        "high",
        (Signal("new_device", 20, "New device."), Signal("new_country", 45, "New country.")),
    )
    decision = decide(POLICY, ctx(), session(PASSWORD), high, now=NOW)
    assert decision.rule == "risky-context" and "New device." in decision.reasons
    critical = RiskAssessment(95, "critical", high.signals)
    denied = decide(POLICY, ctx(), session(PASSWORD), critical, now=NOW)
    assert denied.outcome is Outcome.DENY and "looks like an attack" in denied.reasons[0]


def test_network_condition() -> None:
    office = decide(POLICY, ctx("/customers/1", client_ip="10.20.0.9"), session(PASSWORD), now=NOW)
    cafe = decide(POLICY, ctx("/customers/1", client_ip="198.51.100.7"), session(PASSWORD), now=NOW)
    assert office.allowed and cafe.outcome is Outcome.STEP_UP


def test_explain_shows_skipped_looked_at_and_matched_rules() -> None:
    explanation = explain(POLICY, ctx("/admin/users/bob/roles", "POST"), session(PASSWORD), now=NOW)
    by_rule = {step.rule: step for step in explanation.trace}
    assert by_rule["admin-roles"].matched
    assert by_rule["large-transfer"].looked_at is False
    assert "does not hold" in by_rule["critical-risk"].why
    assert explanation.decision == decide(
        POLICY, ctx("/admin/users/bob/roles", "POST"), session(PASSWORD), now=NOW
    )


def test_group_and_user_matches() -> None:
    policy = compile_policy(
        {
            "rules": [
                {"name": "ops", "match": {"groups": ["ops"]}, "require": {"level": "aal2"}},
                {"name": "bob", "match": {"users": ["bob"]}, "deny": "no"},
                {
                    "name": "api",
                    "match": {"hosts": ["*.example.com"], "actions": ["payments.*"]},
                    "require": {"level": "aal3"},
                },
            ]
        }
    )
    assert (
        decide(policy, ctx(), session(PASSWORD, groups=frozenset({"ops"})), now=NOW).rule == "ops"
    )
    assert decide(policy, ctx(), session(PASSWORD), now=NOW).rule == "default"
    assert decide(policy, ctx(action="payments.refund"), session(PASSWORD), now=NOW).rule == "api"


# --- property: a request never gets a weaker decision than its canonical form -----------------

PROTECTED = ["/admin/users/bob/roles", "/customers/export", "/transfers", "/admin/audit"]


def _encode(ch: str, how: int) -> str:
    if ch == "/":
        return ch
    if how == 1:
        return f"%{ord(ch):02X}"
    if how == 2:
        return f"%{ord(ch):02x}"
    if how == 3:
        return ch.upper()
    return ch


@st.composite
def tricked(draw: st.DrawFn) -> tuple[str, str]:
    base = draw(st.sampled_from(PROTECTED))
    chars = [_encode(c, draw(st.integers(0, 4))) for c in base]
    raw = "".join(chars)
    trick = draw(
        st.sampled_from(
            ["", "//", "/./", "/x/../", "/%2e/", "/%2e%2e/", "%2f", ";a=1", "%00", "\\", "/.%2e/"]
        )
    )
    at = draw(st.integers(0, len(raw)))
    if trick and raw[at - 1 : at] == "/" or at == 0:
        at = max(at, 1)
    return base, raw[:at] + trick + raw[at:]


@settings(max_examples=400, deadline=None)
@given(case=tricked(), method=st.sampled_from(["POST", "GET", "post"]))
def test_no_request_is_weaker_than_its_canonical_form(case: tuple[str, str], method: str) -> None:
    base, raw = case
    try:
        path = canonical_path(raw)
    except BadRequest:
        return  # refused with a 400: never a weaker decision
    s = session(PASSWORD)
    canonical = decide(
        POLICY,
        RequestContext(method=method.upper(), host="bank.example.com", path=path),
        s,
        now=NOW,
    )
    if path.lower() == base.lower():
        plain = decide(
            POLICY,
            RequestContext(method=method.upper(), host="bank.example.com", path=base),
            s,
            now=NOW,
        )
        assert STRENGTH[canonical.outcome] >= STRENGTH[plain.outcome]
        assert canonical.rule == plain.rule


@pytest.mark.parametrize("path", ["/admin/users/bob/roles/", "/ADMIN/Users/bob/roles",
                                  "/admin/users/bob/roles"])
def test_trailing_slash_and_case_do_not_escape_a_rule(path: str) -> None:
    assert decide(POLICY, ctx(path, "POST"), session(PASSWORD), now=NOW).rule == "admin-roles"


@pytest.mark.parametrize("host", ["BANK.EXAMPLE.COM", "bank.example.com.", "Bank.Example.Com.:443"])
def test_host_variants_get_the_same_rule(host: str) -> None:
    policy = compile_policy(
        {
            "rules": [
                {
                    "name": "bank",
                    "match": {"hosts": ["bank.example.com"]},
                    "require": {"level": "aal2"},
                }
            ]
        }
    )
    context = RequestContext(method="GET", host=canonical_host(host), path="/")
    assert decide(policy, context, session(PASSWORD), now=NOW).rule == "bank"


# ------------------------------------------------------------- boundaries that mutation found


def test_freshness_holds_at_exactly_max_age_and_fails_one_second_later() -> None:
    """`max_age` is inclusive: an event exactly max_age old still counts; one second more
    does not (customer-export: aal3 within 15 minutes)."""
    at_limit = session(PASSWORD, ("webauthn", Level.AAL3, 15 * 60.0))
    past_limit = session(PASSWORD, ("webauthn", Level.AAL3, 15 * 60.0 + 1))
    assert decide(POLICY, ctx("/customers/export"), at_limit, now=NOW).allowed
    stale = decide(POLICY, ctx("/customers/export"), past_limit, now=NOW)
    assert stale.outcome is Outcome.STEP_UP
    assert any("older than 15 minutes" in r for r in stale.reasons)


def test_grant_freshness_holds_at_exactly_max_age_and_fails_one_second_later() -> None:
    """A scoped grant (admin-roles: aal2 within 5 minutes) is judged by the same boundary."""
    at_limit = grant("admin", age=300, ttl=3600)
    past_limit = grant("admin", age=301, ttl=3600)
    request = ctx("/admin/users/bob/roles", "POST")
    assert decide(POLICY, request, session(PASSWORD), grants=[at_limit], now=NOW).allowed
    decision = decide(POLICY, request, session(PASSWORD), grants=[past_limit], now=NOW)
    assert decision.outcome is Outcome.STEP_UP


def test_an_unexpired_grant_older_than_the_rules_max_age_does_not_count() -> None:
    """A grant made for admin-pages (max_age 1h, so it lives an hour) shares the scope `admin`
    with admin-roles (max_age 5m): ten minutes later it still opens the console but does not
    let anyone change roles."""
    console_grant = grant("admin", age=600, ttl=3600)
    assert console_grant.expires_at > NOW
    s = session(PASSWORD)
    assert decide(POLICY, ctx("/admin/audit"), s, grants=[console_grant], now=NOW).allowed
    roles = decide(POLICY, ctx("/admin/users/bob/roles", "POST"), s, grants=[console_grant],
                   now=NOW)
    assert roles.outcome is Outcome.STEP_UP and roles.rule == "admin-roles"


def test_a_grant_made_with_a_factor_outside_the_rules_methods_does_not_count() -> None:
    """admin-roles allows webauthn, totp or push: a grant from a recovery code (same scope,
    level and age) opens the console, which allows any method, but not the roles change."""
    policy = compile_policy({"rules": [
        {"name": "roles", "match": {"paths": ["/roles"]},
         "require": {"level": "aal2", "scope": "admin", "methods": ["webauthn", "totp"]}},
        {"name": "console", "match": {"paths": ["/console"]},
         "require": {"level": "aal2", "scope": "admin"}},
    ]})
    s = session(PASSWORD)
    by_recovery = grant("admin", factor="recovery")
    by_totp = grant("admin", factor="totp")
    assert decide(policy, ctx("/console"), s, grants=[by_recovery], now=NOW).allowed
    assert decide(policy, ctx("/roles"), s, grants=[by_recovery], now=NOW).outcome \
        is Outcome.STEP_UP
    assert decide(policy, ctx("/roles"), s, grants=[by_totp], now=NOW).allowed


def test_session_lifetimes_are_inclusive_at_their_limits() -> None:
    """aal2 lives 1 h idle and 24 h overall (NIST SP 800-63B rev 4): at each limit exactly the
    level still counts, one second past it does not."""
    policy = compile_policy(
        {"rules": [{"name": "r", "match": {"paths": ["/x"]}, "require": {"level": "aal2"}}]}
    )
    totp_at = ("totp", Level.AAL2, 24 * 3600.0)
    assert decide(policy, ctx("/x"), session(PASSWORD, ("totp", Level.AAL2, 60.0), idle=3600),
                  now=NOW).allowed
    assert not decide(policy, ctx("/x"), session(PASSWORD, ("totp", Level.AAL2, 60.0),
                                                 idle=3601), now=NOW).allowed
    assert decide(policy, ctx("/x"), session(PASSWORD, totp_at), now=NOW).allowed
    assert not decide(policy, ctx("/x"), session(PASSWORD, ("totp", Level.AAL2, 24 * 3600.0 + 1)),
                      now=NOW).allowed


@pytest.mark.parametrize(("path", "method"), [
    ("/admin/users/bob/roles", "GET"),  # admin-roles is looked at, its method does not match
    ("/admin/audit", "GET"), ("/customers/export", "GET"), ("/customers/7", "GET"),
    ("/transfers", "POST"), ("/dashboard", "GET"),
])
def test_explain_decides_exactly_as_decide(path: str, method: str) -> None:
    """`stepguard policy explain` must never show another decision than the gateway takes."""
    request = ctx(path, method, attributes={"amount": 5000, "payee": "Bob"}, client_ip="10.20.0.9")
    idle = session(PASSWORD, idle=31 * 86400.0)  # its sign-in has lapsed: the default steps up
    for state in (None, session(PASSWORD), session(PASSWORD, ("totp", Level.AAL2, 60.0)), idle):
        explanation = explain(POLICY, request, state, now=NOW)
        assert explanation.decision == decide(POLICY, request, state, now=NOW)
        for step in explanation.trace:
            if step.looked_at and not step.matched and "does not match" in step.why:
                assert step.rule != explanation.decision.rule


def test_explain_names_the_part_of_the_match_that_failed() -> None:
    trace = explain(POLICY, ctx("/admin/users/bob/roles", "GET"), session(PASSWORD), now=NOW).trace
    roles = next(step for step in trace if step.rule == "admin-roles")
    assert roles.looked_at and not roles.matched
    assert roles.why == "methods ['POST', 'PUT', 'DELETE'] does not match"


def test_explain_marks_each_step_looked_at_and_matched_truthfully() -> None:
    default = explain(POLICY, ctx("/dashboard"), session(PASSWORD), now=NOW).trace
    last = default[-1]
    assert (last.rule, last.looked_at, last.matched) == ("default", True, True)
    assert last.why == "no rule matched: the default applies"
    skipped = [s for s in default if not s.looked_at]
    assert skipped and all(s.matched is False for s in skipped)
    assert all(s.why == "skipped by the index (host or path)" for s in skipped)
    held = [s for s in default if s.looked_at and "does not hold" in s.why]
    assert held and all(s.matched is False for s in held)
    transfer_trace = explain(POLICY, transfer(5000, "Bob"), session(PASSWORD), now=NOW).trace
    matched = next(s for s in transfer_trace if s.rule == "large-transfer")
    assert matched.looked_at is True and matched.matched is True
    assert matched.why == "matched; condition 'amount > 1000' holds"
    unknown = explain(POLICY, ctx("/transfers", "POST"), session(PASSWORD), now=NOW)
    failed = next(s for s in unknown.trace if s.rule == "large-transfer")
    assert failed.matched is True and "could not be evaluated" in failed.why
    assert unknown.decision == decide(POLICY, ctx("/transfers", "POST"), session(PASSWORD), now=NOW)
