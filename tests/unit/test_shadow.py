"""Report (shadow) mode in the core: a report-mode rule or policy is decided, never enforced,
and never weakens the enforced rules below it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import decide, explain
from stepguard.core.decision import Outcome
from stepguard.core.errors import PolicyError
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.core.policy import compile_policy

NOW = 1_800_000_000.0
BASE = {
    "rules": [
        {"name": "public", "match": {"paths": ["/static/**"]}, "allow": True},
        {"name": "admin", "match": {"paths": ["/admin/**"]}, "require": {"level": "aal2"}},
        {"name": "blocked", "match": {"paths": ["/blocked"]}, "deny": "no"},
    ],
    "default": {"level": "aal1"},
}


def policy(*, mode: str = "enforce", report_rules: list[dict[str, object]] = (),
           first: bool = True) -> object:
    rules = list(BASE["rules"])  # type: ignore[arg-type]
    extra = [{**r, "mode": "report"} for r in report_rules]
    return compile_policy({**BASE, "mode": mode,
                           "rules": [*extra, *rules] if first else [*rules, *extra]})


def ctx(path: str, method: str = "GET") -> RequestContext:
    return RequestContext(method=method, host="app.example.com", path=path)


def signed_in(level: Level = Level.AAL1) -> SessionState:
    factor = "password" if level is Level.AAL1 else "webauthn"
    event = AuthEvent(factor=factor, amr=FACTOR_AMR[factor], level=level, at=NOW - 60)
    return SessionState(id="s1", subject=Subject(id="alice"), created=NOW - 600,
                        last_seen=NOW - 1, events=(event,))


def test_a_report_rule_that_would_step_up_lets_the_request_pass_and_says_so() -> None:
    p = policy(report_rules=[{"name": "new-export", "match": {"paths": ["/export"]},
                              "require": {"level": "aal2", "max_age": "5m"}}])
    d = decide(p, ctx("/export"), signed_in(), now=NOW)
    assert d.outcome is Outcome.ALLOW and d.rule == "default"
    assert d.shadow is not None and d.shadow.outcome is Outcome.STEP_UP
    assert d.shadow.rule == "new-export" and d.shadow.requirement is not None


def test_a_report_rule_never_weakens_an_enforced_rule_below_it() -> None:
    p = policy(report_rules=[{"name": "relaxed", "match": {"paths": ["/admin/**"]},
                              "allow": True}])
    d = decide(p, ctx("/admin/users"), signed_in(), now=NOW)
    assert d.outcome is Outcome.STEP_UP and d.rule == "admin"
    assert d.shadow is not None and d.shadow.outcome is Outcome.ALLOW  # "would allow"
    denied = decide(policy(report_rules=[{"name": "r", "match": {"paths": ["/blocked"]},
                                          "require": {"level": "aal1"}}]),
                    ctx("/blocked"), signed_in(), now=NOW)
    assert denied.outcome is Outcome.DENY and denied.shadow is not None


def test_a_report_rule_that_agrees_leaves_no_shadow() -> None:
    p = policy(report_rules=[{"name": "same", "match": {"paths": ["/admin/**"]},
                              "require": {"level": "aal2"}}])
    d = decide(p, ctx("/admin/x"), signed_in(Level.AAL2), now=NOW)
    assert d.allowed and d.shadow is None


def test_a_report_policy_passes_every_request_and_keeps_what_it_would_do() -> None:
    p = policy(mode="report")
    denied = decide(p, ctx("/blocked"), signed_in(), now=NOW)
    assert denied.allowed and denied.shadow is not None
    assert denied.shadow.outcome is Outcome.DENY and denied.shadow.rule == "blocked"
    anonymous = decide(p, ctx("/admin/x"), None, now=NOW)
    assert anonymous.allowed and anonymous.level is Level.AAL0
    assert anonymous.shadow is not None and anonymous.shadow.login
    allowed = decide(p, ctx("/x"), signed_in(), now=NOW)
    assert allowed.allowed and allowed.shadow is None and allowed.level is Level.AAL1


def test_explain_shows_the_same_enforced_decision_and_shadow() -> None:
    p = policy(report_rules=[{"name": "new", "match": {"paths": ["/x"]}, "deny": "no"}])
    d = decide(p, ctx("/x"), signed_in(), now=NOW)
    e = explain(p, ctx("/x"), signed_in(), now=NOW)
    assert e.decision == d and d.shadow is not None and d.shadow.outcome is Outcome.DENY


@pytest.mark.parametrize("where", [{"mode": "shadow"}, {"rules": [{"name": "a", "mode": 1,
                                                                   "allow": True}]}])
def test_an_unknown_mode_is_refused_with_its_path(where: dict[str, object]) -> None:
    with pytest.raises(PolicyError) as raised:
        compile_policy({**BASE, **where})
    assert "mode" in str(raised.value) and "enforce, report" in str(raised.value)


def test_a_policy_without_report_rules_has_no_enforced_copy() -> None:
    assert policy().enforced is None  # type: ignore[attr-defined]


PATHS = st.sampled_from(["/static/a", "/admin/x", "/blocked", "/export", "/x", "/admin"])


@settings(max_examples=200, deadline=None)
@given(PATHS, st.booleans(), st.sampled_from([None, Level.AAL1, Level.AAL2]),
       st.sampled_from([{"allow": True}, {"deny": "no"}, {"require": {"level": "aal3"}}]))
def test_enforcement_is_exactly_the_policy_without_its_report_rules(
        path: str, first: bool, level: Level | None, outcome: dict[str, object]) -> None:
    with_report = policy(report_rules=[{"name": "r", "match": {"paths": ["/**"]}, **outcome}],
                         first=first)
    without = policy()
    state = signed_in(level) if level else None
    live = decide(with_report, ctx(path), state, now=NOW)  # type: ignore[arg-type]
    plain = decide(without, ctx(path), state, now=NOW)  # type: ignore[arg-type]
    assert (live.outcome, live.rule) == (plain.outcome, plain.rule)
