"""Guard's decision flow on the in-memory store, rule by rule: what the slow and the event-loop
paths each do besides deciding (note the session as seen, record an amount, audit or not,
decide again when a single-use grant was spent elsewhere, hand step-ups to the slow path), and
the counters and cache hygiene the metrics and memory rely on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.levels import Level
from stepguard.service.guard import TOUCH_EVERY, Guard
from stepguard.service.runtime import Runtime, build_runtime, token_key
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import SessionSnapshot
from tests.support.gateway import Clock, write_config
from tests.unit.test_guard import (
    ADMIN,
    DELETE,
    ONCE_POLICY,
    PAGE,
    POLICY,
    decisions,
    grant_answering,
    signed_in,
    versions_now,
)

LOCATIONS = """
risk:
  locations:
    - {network: 198.51.100.0/24, country: DE, city: Berlin}
    - {network: 203.0.113.0/24, country: FR}
"""
ELSEWHERE = RequestContext(method="GET", host="app.test", path="/orders",
                           client_ip="203.0.113.9", user_agent="Firefox/2")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_runtime(tmp_path: Path, clock: Clock, policy: str = POLICY, **kwargs: Any) -> Runtime:
    return build_runtime(load_config(write_config(tmp_path, policy=policy, extra=LOCATIONS)),
                         clock=clock, store=kwargs.pop("store", MemoryStore()),
                         audit_log=MemoryAuditLog(), **kwargs)


@pytest.fixture
def runtime(tmp_path: Path, clock: Clock) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, clock)
    yield rt
    rt.close()


@pytest.fixture
def once(tmp_path: Path, clock: Clock) -> Iterator[Runtime]:
    """A runtime whose DELETE rule asks for a single-use grant (ONCE_POLICY)."""
    rt = make_runtime(tmp_path, clock, policy=ONCE_POLICY)
    yield rt
    rt.close()


def bearer_state(guard: Guard, rt: Runtime) -> Any:
    """A signed-in session's state, as the bearer adapter holds it."""
    loaded = guard.load(signed_in(rt)[2])
    assert loaded is not None
    return loaded.state


# ------------------------------------------------------------------ paths and counters


def test_a_step_up_found_on_the_event_loop_is_left_to_the_slow_path(runtime: Runtime) -> None:
    """Starting a challenge writes: the cached path answers None, the thread path decides."""
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    assert guard.check(PAGE, token).session is not None  # cached
    assert guard.check_cached(ADMIN, token) is None
    assert guard.check(ADMIN, token).decision.outcome is Outcome.STEP_UP


def test_a_public_page_is_allowed_on_the_event_loop_without_a_session(runtime: Runtime) -> None:
    guard = Guard(runtime)
    public = RequestContext(method="GET", host="app.test", path="/static/app.css")
    for token in (None, ""):
        check = guard.check_cached(public, token)
        assert check is not None and check.decision.allowed and check.session is None


def test_hits_and_misses_are_counted_one_each(runtime: Runtime) -> None:
    guard = Guard(runtime)
    tokens = [signed_in(runtime, name)[2] for name in ("alice", "bob")]
    for token in tokens:
        guard.check(PAGE, token)
    for _ in range(3):
        guard.check(PAGE, tokens[0])
    assert (guard.cache.hits, guard.cache.misses) == (3, 2)


def test_the_version_board_counts_its_hits_one_each(tmp_path: Path, clock: Clock) -> None:
    """On SQLite the board answers for an unchanged copy without a read: still one hit each."""
    rt = build_runtime(load_config(write_config(tmp_path)), clock=clock,
                       audit_log=MemoryAuditLog())
    try:
        guard = Guard(rt)
        _, _, token = signed_in(rt)
        for _ in range(4):
            assert guard.check(PAGE, token).session is not None
        assert (guard.cache.hits, guard.cache.misses) == (3, 1)
    finally:
        rt.close()


def test_a_gone_sessions_copy_leaves_the_cache(runtime: Runtime) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    guard.check(PAGE, token)
    key = token_key(token)
    assert key is not None and guard.cache.get(key) is not None
    runtime.store.sessions.revoke(session.id, now=runtime.now())
    assert guard.check(PAGE, token).session is None
    assert guard.cache.get(key) is None


class SlowLoads(MemoryStore):
    """A store whose full loads take a while, so that concurrent first requests overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        read = self.session_states.read

        def slow(token_hash: str, **kwargs: Any) -> Any:
            found = read(token_hash, **kwargs)
            if isinstance(found, SessionSnapshot):
                self.loads += 1
                time.sleep(0.05)
            return found

        self.session_states.read = slow  # type: ignore[method-assign]


def test_overlapping_first_requests_for_one_session_load_it_once(tmp_path: Path,
                                                                 clock: Clock) -> None:
    store = SlowLoads()
    rt = make_runtime(tmp_path, clock, store=store)
    try:
        guard = Guard(rt)
        _, _, token = signed_in(rt)
        threads = [threading.Thread(target=guard.check, args=(PAGE, token)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.loads == 1
    finally:
        rt.close()


# ------------------------------------------------------------------ seen, amounts, risk


@pytest.mark.parametrize("path", ["thread", "event loop"])
def test_a_request_due_a_touch_notes_where_the_session_was_seen(
        runtime: Runtime, clock: Clock, path: str) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    guard.check(PAGE, token)
    clock.advance(TOUCH_EVERY)  # exactly due
    check = guard.check(ELSEWHERE, token) if path == "thread" \
        else guard.check_cached(ELSEWHERE, token)
    assert check is not None and check.decision.allowed
    key = token_key(token)
    assert key is not None
    copy = guard.cache.get(key)
    assert copy is not None and copy.record.last_seen == clock.now  # the cached copy knows
    runtime.last_seen.flush()
    stored = runtime.store.sessions.get(session.id)
    assert stored is not None and stored.last_seen == clock.now
    assert (stored.ip, stored.user_agent) == ("203.0.113.9", "Firefox/2")


def test_a_request_not_yet_due_a_touch_writes_nothing(runtime: Runtime, clock: Clock) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    guard.check(PAGE, token)
    clock.advance(TOUCH_EVERY - 0.5)
    guard.check(ELSEWHERE, token)
    runtime.last_seen.flush()
    stored = runtime.store.sessions.get(session.id)
    assert stored is not None and stored.last_seen == session.last_seen


def test_a_touch_keeps_the_sessions_user_agent_when_the_request_has_none(
        runtime: Runtime, clock: Clock) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    guard.check(PAGE, token)
    clock.advance(TOUCH_EVERY)
    guard.check(RequestContext(method="GET", host="app.test", path="/orders"), token)
    runtime.last_seen.flush()
    stored = runtime.store.sessions.get(session.id)
    assert stored is not None and (stored.ip, stored.user_agent) == (session.ip,
                                                                    session.user_agent)


def test_the_revocation_check_of_a_held_session_also_notes_it_as_seen(
        runtime: Runtime, clock: Clock) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    guard.check(PAGE, token)
    clock.advance(TOUCH_EVERY)
    key = token_key(token)
    assert key is not None
    versions = versions_now(guard, key, ELSEWHERE)
    assert versions is not None
    runtime.last_seen.flush()
    stored = runtime.store.sessions.get(session.id)
    assert stored is not None and stored.last_seen == clock.now


def test_an_allowed_amount_joins_the_users_baseline_and_a_refused_one_does_not(
        runtime: Runtime) -> None:
    guard = Guard(runtime)
    user, _, token = signed_in(runtime)
    paid = RequestContext(method="POST", host="app.test", path="/orders",
                          client_ip="198.51.100.7", attributes={"amount": 120})
    assert guard.check(paid, token).decision.allowed
    refused = RequestContext(method="POST", host="app.test", path="/admin/pay",
                             client_ip="198.51.100.7", attributes={"amount": 9000})
    assert not guard.check(refused, token).decision.allowed
    assert list(runtime.store.history.load(user.id).amounts) == [120.0]


def test_risk_knows_which_country_a_request_comes_from(runtime: Runtime) -> None:
    guard = Guard(runtime)
    user, _, token = signed_in(runtime)
    runtime.store.history.record_success(
        user.id, device_id="", network_prefix="198.51.100.0/24", country="DE", location=None,
        at=runtime.now(), hour=17)
    assert "new_country" in guard.check(ELSEWHERE, token).risk.names  # France, never seen
    assert "new_country" not in guard.check(PAGE, token).risk.names  # Berlin
    nowhere = RequestContext(method="GET", host="app.test", path="/orders")
    assert "new_country" not in guard.check(nowhere, token).risk.names


# ------------------------------------------------------------------ audit


def test_a_decision_made_without_audit_writes_no_entry(runtime: Runtime) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    before = len(decisions(runtime))
    for _ in range(2):
        assert guard.check(ADMIN, token, audit=False).decision.outcome is Outcome.STEP_UP
    assert len(decisions(runtime)) == before
    guard.check(ADMIN, token)
    [entry] = decisions(runtime)[before:]
    assert (entry.decision, entry.rule) == ("step_up", "admin")  # type: ignore[attr-defined]
    assert entry.session == runtime.session_ref(session.id) != ""  # type: ignore[attr-defined]
    recorded = entry.detail["input"]  # type: ignore[attr-defined]
    assert recorded["session"]["created"] == session.created


# ------------------------------------------------------------------ single-use grants


def test_a_grant_spent_by_another_request_meanwhile_is_decided_again_without_it(
        once: Runtime, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = Guard(once)
    user, session, token = signed_in(once)
    asked = guard.check(DELETE, token).decision
    once.store.grants.add(grant_answering(asked, session.id, user.id, granted_at=clock.now,
                                          expires_at=clock.now + 300))
    assert guard.preview(DELETE, guard.load(token)).decision.allowed
    monkeypatch.setattr(once.store.grants, "consume", lambda *a, **k: False)  # lost the race
    check = guard.check(DELETE, token)
    assert check.decision.outcome is Outcome.STEP_UP and not check.decision.consume_grant


def test_a_bearer_state_whose_own_sign_in_stands_in_for_a_grant_is_allowed_once(
        once: Runtime, clock: Clock) -> None:
    """`judge_token`: the state's own recent sign-in stands in for the grant a rule asks for;
    a single-use one is stored and spent, so the same state is asked again next time."""
    guard = Guard(once)
    state = bearer_state(guard, once)
    made: list[Any] = []

    def grant_for(decision: Any) -> Any:  # the same sign-in gives the same grant
        if not made:
            made.append(grant_answering(decision, state.id, state.subject.id,
                                        granted_at=clock.now, expires_at=clock.now + 300))
        return made[0]

    first = guard.judge_token(DELETE, state, grant_for=grant_for)
    assert first.decision.allowed and first.decision.grant_id
    again = guard.judge_token(DELETE, state, grant_for=grant_for)
    assert again.decision.outcome is Outcome.STEP_UP  # the same grant, spent
    refused = guard.judge_token(DELETE, state, grant_for=lambda decision: None)
    assert refused.decision.outcome is Outcome.STEP_UP


def test_a_deny_is_never_remembered_as_a_plain_allow(tmp_path: Path, clock: Clock) -> None:
    """Only allows are given again: a deny asked twice is decided and sealed twice, never
    counted on an allow summary."""
    deny = POLICY.replace("default:", """\
  - name: vault
    match: {paths: ["/vault/**"]}
    deny: "The vault is closed"
default:""")
    rt = make_runtime(tmp_path, clock, policy=deny)
    try:
        guard = Guard(rt)
        _, _, token = signed_in(rt)
        vault = RequestContext(method="GET", host="app.test", path="/vault/keys",
                               client_ip="198.51.100.7")
        assert guard.check(vault, token).decision.outcome is Outcome.DENY
        for _ in range(2):
            check = guard.check_cached(vault, token)
            assert check is not None and check.decision.outcome is Outcome.DENY
        entries = decisions(rt)
        assert [e.decision for e in entries] == ["deny"] * 3  # type: ignore[attr-defined]
    finally:
        rt.close()


def test_when_another_request_spent_the_grant_chosen_the_next_one_is_spent_too(
        once: Runtime, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two step-ups left two single-use grants. A request that loses its grant to a concurrent
    one and is allowed with the other must spend that other one as well: exactly once each."""
    guard = Guard(once)
    user, session, token = signed_in(once)
    asked = guard.check(DELETE, token).decision
    grants = [grant_answering(asked, session.id, user.id, granted_at=clock.now + i,
                              expires_at=clock.now + 300) for i in (0, 1)]
    for grant in grants:
        once.store.grants.add(grant)
    real = once.store.grants.consume
    lost: list[str] = []

    def racing(grant_id: str, **kwargs: Any) -> bool:
        if not lost:  # a concurrent request spends the first grant chosen, just before
            lost.append(grant_id)
            assert real(grant_id, **kwargs)
            return False
        return real(grant_id, **kwargs)

    monkeypatch.setattr(once.store.grants, "consume", racing)
    check = guard.check(DELETE, token)
    assert check.decision.allowed and check.decision.grant_id not in lost
    for grant in grants:  # both spent: neither can allow again
        assert not real(grant.id, session_id=session.id, now=clock.now)
    assert guard.check(DELETE, token).decision.outcome is Outcome.STEP_UP


def test_a_step_up_entry_says_why_with_the_risk_and_the_level_asked(runtime: Runtime) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    check = guard.check(ADMIN, token)
    [entry] = [e for e in decisions(runtime) if e.decision == "step_up"]  # type: ignore[attr-defined]
    detail = entry.detail  # type: ignore[attr-defined]
    assert (detail["risk_score"], detail["risk_level"], detail["signals"]) == (
        check.risk.score, check.risk.level, list(check.risk.names))
    assert detail["level"] == "aal2"
    assert detail["input"]["session"]["created"] == session.created


def test_answers_given_again_are_counted_on_the_summary_with_what_they_were(
        runtime: Runtime) -> None:
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    guard.check(PAGE, token)
    for _ in range(2):
        assert guard.check_cached(PAGE, token) is not None  # given again
    [summary] = [e for e in decisions(runtime) if e.outcome == "allow_summary"]  # type: ignore[attr-defined]
    assert summary.detail["count"] == 3  # type: ignore[attr-defined]
    assert summary.detail["requests"] == [["GET", "/orders", 3]]  # type: ignore[attr-defined]
    assert summary.detail["input"]["session"] is not None  # type: ignore[attr-defined]


def test_every_request_mode_seals_each_answer_given_again(tmp_path: Path, clock: Clock) -> None:
    rt = build_runtime(load_config(write_config(tmp_path, policy=POLICY,
                                                extra="audit: {allows: every_request}\n")),
                       clock=clock, store=MemoryStore(), audit_log=MemoryAuditLog())
    try:
        guard = Guard(rt)
        _, _, token = signed_in(rt)
        guard.check(PAGE, token)
        for _ in range(2):
            assert guard.check_cached(PAGE, token) is not None
        entries = decisions(rt)
        assert [e.outcome for e in entries] == ["allow"] * 3  # type: ignore[attr-defined]
        assert all(e.detail["input"]["session"] for e in entries)  # type: ignore[attr-defined]
    finally:
        rt.close()


def test_an_allow_under_a_rule_asking_more_than_a_sign_in_is_its_own_entry(
        tmp_path: Path, clock: Clock) -> None:
    """A rule that asks for aal2 (no age, no methods) is not plain: its allows are sealed one by
    one, never summarised or given again."""
    reports = POLICY.replace("default:", """\
  - name: reports
    match: {paths: ["/reports/**"]}
    require: {level: aal2}
default:""")
    rt = make_runtime(tmp_path, clock, policy=reports)
    try:
        guard = Guard(rt)
        _, session, token = signed_in(rt)
        rt.store.sessions.add_event(session.id, AuthEvent(factor="totp", amr=("otp",),
                                                          level=Level.AAL2, at=clock.now))
        report = RequestContext(method="GET", host="app.test", path="/reports/q3",
                                client_ip="198.51.100.7")
        for _ in range(2):
            assert guard.check(report, token).decision.allowed
        assert [e.outcome for e in decisions(rt)] == ["allow", "allow"]  # type: ignore[attr-defined]
    finally:
        rt.close()


def test_a_bearer_state_with_an_expired_stand_in_is_asked_again(once: Runtime,
                                                                clock: Clock) -> None:
    guard = Guard(once)
    state = bearer_state(guard, once)

    def expired(decision: Any) -> Any:
        return grant_answering(decision, state.id, state.subject.id,
                               granted_at=clock.now - 600, expires_at=clock.now - 1)

    assert guard.judge_token(DELETE, state, grant_for=expired).decision.outcome \
        is Outcome.STEP_UP
