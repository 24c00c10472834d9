"""`explain()` is `decide()` with a trace: the same decision for every request, session, risk,
grant and time (it is what `stepguard policy explain` and `policy test` show an operator), and a
trace that names each rule's verdict in words."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import TraceStep, decide, explain
from stepguard.core.decision import Outcome
from stepguard.core.grant import Grant
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.core.policy import compile_policy
from stepguard.core.risk import NO_RISK, RiskAssessment, Signal

NOW = 1_800_000_000.0
RULES = [
    {"name": "ops-only", "match": {"paths": ["/ops/**"], "groups": ["ops"]},
     "require": {"level": "aal2", "max_age": "10m"}},
    {"name": "night", "match": {"paths": ["/night"]}, "when": "hour() >= 22 or hour() < 6",
     "require": {"level": "aal2"}},
    {"name": "stale", "match": {"paths": ["/stale"]}, "when": "session.auth_age > 600",
     "require": {"level": "aal2"}},
    {"name": "risky", "match": {"paths": ["/pay"]}, "when": "risk.score >= 50",
     "require": {"level": "aal2", "max_age": "0s"}},
    {"name": "trial", "mode": "report", "match": {"paths": ["/trial/**"]},
     "require": {"level": "aal3"}},
    {"name": "blocked", "match": {"paths": ["/blocked"]}, "deny": "Closed for {request.path}"},
    {"name": "bob-only", "match": {"paths": ["/bob"], "users": ["bob"]}, "allow": True},
]
POLICY = compile_policy({"rules": RULES, "default": {"level": "aal1"}})
REPORTED = compile_policy({"rules": RULES, "default": {"level": "aal1"}, "mode": "report"})
PATHS = ["/ops/x", "/night", "/stale", "/pay", "/trial/a", "/blocked", "/bob", "/other"]


def state(user: str, groups: frozenset[str], events: list[tuple[str, Level, float]],
          idle: float) -> SessionState:
    built = tuple(AuthEvent(factor=f, amr=FACTOR_AMR[f], level=level, at=NOW - age)
                  for f, level, age in events)
    return SessionState(id="s1", subject=Subject(id=user, groups=groups), created=NOW - 7200,
                        last_seen=NOW - idle, events=built)


events = st.lists(st.tuples(st.sampled_from(["password", "totp", "webauthn"]),
                            st.sampled_from([Level.AAL1, Level.AAL2, Level.AAL3]),
                            st.sampled_from([5.0, 300.0, 700.0, 5000.0])), max_size=3)
sessions = st.one_of(st.none(), st.builds(
    state, st.sampled_from(["alice", "bob"]), st.sampled_from([frozenset(), frozenset({"ops"})]),
    events, st.sampled_from([0.0, 100.0, 4000.0])))
NEW_DEVICE = Signal("new_device", 70, "a new device")
risks = st.sampled_from([NO_RISK, RiskAssessment(score=70, level="high", signals=(NEW_DEVICE,))])


def grant_for(scope: str, session: SessionState | None) -> Grant:
    subject = session.subject.id if session is not None else "alice"
    return Grant(id="g1", subject_id=subject, session_id="s1", scope=scope, level=Level.AAL2,
                 amr=("otp",), factor="totp", granted_at=NOW - 30, expires_at=NOW + 300,
                 single_use=True)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), session=sessions, risk=risks,
       hour=st.sampled_from([3, 12, 23]), report=st.booleans(),
       granted=st.sampled_from(["", "risky", "trial", "ops-only"]))
def test_explain_decides_as_decide(path: str, session: SessionState | None,
                                   risk: RiskAssessment, hour: int, report: bool,
                                   granted: str) -> None:
    policy = REPORTED if report else POLICY
    now = NOW - NOW % 86400 + hour * 3600 + 60
    context = RequestContext(method="POST", host="app.example", path=path)
    grants = (grant_for(granted, session),) if granted else ()
    decision = decide(policy, context, session, risk, grants, now)
    assert explain(policy, context, session, risk, grants, now).decision == decision


def test_the_trace_names_each_rules_verdict_in_rule_order() -> None:
    ops = state("alice", frozenset(), [("password", Level.AAL1, 60.0)], 0.0)
    context = RequestContext(method="GET", host="app.example", path="/ops/x")
    explained = explain(POLICY, context, ops, now=NOW)
    assert explained.decision.rule == "default"
    assert explained.trace[0] == TraceStep("ops-only", True, False,
                                            "groups ['ops'] does not match")
    assert explained.trace[-1] == TraceStep("default", True, True,
                                            "no rule matched: the default applies")
    assert [step.rule for step in explained.trace] == [
        *(rule["name"] for rule in RULES), "default"]
    assert all(not step.looked_at for step in explained.trace[1:-1])


def test_a_plain_match_says_matched() -> None:
    context = RequestContext(method="GET", host="app.example", path="/bob")
    bob = state("bob", frozenset(), [("password", Level.AAL1, 60.0)], 0.0)
    explained = explain(POLICY, context, bob, now=NOW)
    assert TraceStep("bob-only", True, True, "matched") in explained.trace
    assert explained.decision.allowed and explained.decision.rule == "bob-only"


def test_a_whole_policy_in_report_mode_lets_through_at_the_sessions_level() -> None:
    context = RequestContext(method="GET", host="app.example", path="/blocked")
    alice = state("alice", frozenset(), [("password", Level.AAL1, 60.0)], 0.0)
    for decision in (decide(REPORTED, context, alice, now=NOW),
                     explain(REPORTED, context, alice, now=NOW).decision):
        assert (decision.outcome, decision.rule, decision.level) == (
            Outcome.ALLOW, "blocked", Level.AAL1)
        assert decision.shadow is not None and decision.shadow.outcome is Outcome.DENY
        assert decision.shadow.reasons == ("Closed for /blocked",)


# ----------------------------------------------------------------------------- decisions' fields

ALICE = state("alice", frozenset({"ops"}), [("password", Level.AAL1, 60.0)], 0.0)
BOUND = compile_policy({"rules": [
    {"name": "open", "match": {"paths": ["/open"]}, "allow": True},
    {"name": "pay", "match": {"paths": ["/pay"]},
     "require": {"level": "aal2", "bind": ["amount"], "scope": "payments"}},
    {"name": "admin", "match": {"paths": ["/admin"]}, "require": {"level": "aal1"}},
    {"name": "export", "match": {"paths": ["/export"]},
     "require": {"level": "aal2", "methods": ["webauthn"]}},
    {"name": "quiet", "match": {"paths": ["/quiet"]}, "require": {"level": "aal2"}},
    {"name": "watch", "match": {"paths": ["/watch"]}, "when": "risk.score > 10",
     "require": {"level": "aal2"}},
    {"name": "braces", "match": {"paths": ["/braces"]}, "deny": "Use the form }} instead."},
], "default": {"level": "aal1"}, "attributes": {"amount": "string"}})


def request(path: str, **attributes: object) -> RequestContext:
    return RequestContext(method="POST", host="app.example", path=path,
                          attributes=attributes)  # type: ignore[arg-type]


def test_an_allow_rule_carries_no_scope_and_the_sessions_level() -> None:
    assert decide(BOUND, request("/open"), ALICE, now=NOW) == decide(
        BOUND, request("/open"), ALICE, now=NOW)
    signed_in = decide(BOUND, request("/open"), ALICE, now=NOW)
    assert (signed_in.scope, signed_in.level) == ("", Level.AAL1)
    assert decide(BOUND, request("/open"), None, now=NOW).level is Level.AAL0


def test_a_requirement_met_by_the_session_is_scoped_to_its_rule() -> None:
    decision = decide(BOUND, request("/admin"), ALICE, now=NOW)
    assert (decision.outcome, decision.scope, decision.level) == (
        Outcome.ALLOW, "admin", Level.AAL1)


def test_a_step_up_for_an_anonymous_request_names_its_scope() -> None:
    decision = decide(BOUND, request("/pay", amount="5"), None, now=NOW)
    assert (decision.login, decision.scope) == (True, "payments")


def test_a_grant_allow_names_its_scope_and_binding() -> None:
    step_up = decide(BOUND, request("/pay", amount="5"), ALICE, now=NOW)
    assert step_up.outcome is Outcome.STEP_UP and step_up.binding
    grant = Grant(id="g1", subject_id="alice", session_id="s1", scope="payments",
                  level=Level.AAL2, amr=("otp",), factor="totp", granted_at=NOW,
                  expires_at=NOW + 60, binding=step_up.binding)
    allowed = decide(BOUND, request("/pay", amount="5"), ALICE, grants=(grant,), now=NOW)
    assert (allowed.outcome, allowed.scope, allowed.binding, allowed.grant_id) == (
        Outcome.ALLOW, "payments", step_up.binding, "g1")
    at_expiry = decide(BOUND, request("/pay", amount="5"), ALICE, grants=(grant,), now=NOW + 60)
    assert at_expiry.outcome is Outcome.STEP_UP


def test_an_older_event_still_counts_when_the_newest_does_not() -> None:
    passkey_then_password = state("alice", frozenset(), [("webauthn", Level.AAL3, 300.0),
                                                         ("password", Level.AAL1, 10.0)], 0.0)
    assert decide(BOUND, request("/quiet"), passkey_then_password, now=NOW).allowed
    passkey_then_code = state("alice", frozenset(), [("webauthn", Level.AAL3, 300.0),
                                                     ("totp", Level.AAL2, 10.0)], 0.0)
    assert decide(BOUND, request("/export"), passkey_then_code, now=NOW).allowed


def test_events_of_a_level_without_lifetimes_never_expire() -> None:
    from stepguard.core.decide import valid_events

    old = state("alice", frozenset(), [("password", Level.AAL1, 10**7)], 10**6)
    assert valid_events({}, old, NOW) == list(old.events)


RISKY = RiskAssessment(score=80, level="high", signals=(Signal("new_device", 80, "A new device."),))


def test_high_risk_reasons_are_said_on_any_step_up() -> None:
    low = state("alice", frozenset(), [("password", Level.AAL1, 60.0)], 0.0)
    for level, said in (("high", True), ("critical", True), ("medium", False)):
        risk = RiskAssessment(score=80, level=level, signals=RISKY.signals)
        reasons = decide(BOUND, request("/quiet"), low, risk, now=NOW).reasons
        assert ("A new device." in reasons) is said, level
    watched = decide(BOUND, request("/watch"), low,
                     RiskAssessment(score=20, level="low", signals=(Signal("odd", 20, "Odd."),)),
                     now=NOW)
    assert "Odd." in watched.reasons  # the rule uses risk: its signals are the reason


def test_an_escaped_brace_is_said_as_one_even_without_placeholders() -> None:
    assert decide(BOUND, request("/braces"), ALICE, now=NOW).reasons == (
        "Use the form } instead.",)


def test_a_report_rule_is_decided_at_the_requests_time() -> None:
    policy = compile_policy({"rules": [
        {"name": "trial", "mode": "report", "match": {"paths": ["/x"]}, "deny": "trial"},
        {"name": "fresh", "match": {"paths": ["/x"]}, "require": {"level": "aal1",
                                                                  "max_age": "10m"}},
    ], "default": {"level": "aal1"}})
    stale = state("alice", frozenset(), [("password", Level.AAL1, 1200.0)], 0.0)
    decision = decide(policy, request("/x"), stale, now=NOW)
    assert decision.outcome is Outcome.STEP_UP and decision.shadow is not None


def test_a_proof_exactly_max_age_old_is_not_called_too_old() -> None:
    policy = compile_policy({"rules": [
        {"name": "pay", "match": {"paths": ["/pay"]},
         "require": {"level": "aal1", "max_age": "10m", "bind": ["amount"]}},
    ], "default": {"level": "aal1"}, "attributes": {"amount": "string"}})
    for age, said in ((600.0, "Approve exactly these values (amount)"),
                      (601.0, "Your last sign-in at this level is older than 10 minutes.")):
        reasons = decide(policy, request("/pay", amount="5"),
                         state("alice", frozenset(), [("password", Level.AAL1, age)], 0.0),
                         now=NOW).reasons
        assert any(reason.startswith(said) for reason in reasons), (age, reasons)
