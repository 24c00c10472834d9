"""`Guard.answer` and `Guard.audit`: an allow a door gives again (the PostgreSQL door's memo)
is audited as the allow it repeats, a summary count only when it has a summary line."""

from __future__ import annotations

from stepguard.core.context import RequestContext
from stepguard.service.guard import Guard
from tests.unit.conftest import Make
from tests.unit.test_guard import PAGE, decisions, signed_in
from tests.unit.test_guard_rules import EXPORT, REPORT_POLICY


def test_a_report_mode_allow_given_again_is_sealed_with_what_it_would_have_done(make: Make) -> None:
    rt = make(policy=REPORT_POLICY)
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    check = guard.check(EXPORT, token)
    assert check.decision.allowed and check.decision.shadow is not None
    again = guard.answer(check, rt.now() + 60)
    assert again.who is None  # a report-mode shadow has no summary line
    guard.audit(again, rt.now())
    assert [e.outcome for e in decisions(rt)] == ["would_step_up"] * 2  # type: ignore[attr-defined]


def test_an_allow_with_attributes_given_again_is_its_own_entry(make: Make) -> None:
    rt = make()
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    tagged = RequestContext(method="GET", host="app.test", path="/orders",
                            client_ip="198.51.100.7", attributes={"ticket": "T-1"})
    check = guard.check(tagged, token)
    guard.audit(guard.answer(check, rt.now() + 60), rt.now(), 3)  # three at once
    assert [e.outcome for e in decisions(rt)] == ["allow"] * 4  # type: ignore[attr-defined]


def test_a_plain_allow_given_again_is_counted_on_its_summary_line(make: Make) -> None:
    rt = make()
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    check = guard.check(PAGE, token)
    again = guard.answer(check, rt.now() + 60)
    assert again.who is not None and again.until == rt.now() + 60
    guard.audit(again, rt.now())
    guard.audit(again, rt.now(), 3)  # three at once (a turn of the postgres door)
    [line] = decisions(rt)
    assert (line.outcome, line.detail["count"]) == ("allow_summary", 5)  # type: ignore[attr-defined]
    assert rt.observer.decisions.value("allow", "default") == 5
