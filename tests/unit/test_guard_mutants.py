"""Guard rules pinned by exact values, each one a behaviour only the integration tests held
before: the version board's trust, the event loop's reads, what is given again, what a bearer
state is judged with, and every field of the audit entries and counters a decision leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepguard.audit.ledger import request_summary
from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.decision import Decision, Outcome
from stepguard.core.errors import StoreUnavailable
from stepguard.core.levels import Level
from stepguard.core.risk import NO_RISK
from stepguard.service.guard import (
    AUDIT_INLINE_LIMIT,
    STORE_CONTACT_EVERY,
    TOUCH_EVERY,
    Guard,
    with_attributes,
)
from stepguard.service.runtime import Runtime, hash_token
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import SESSION_EVENT_LIMIT, SessionRecord, Versions
from tests.contract import build
from tests.support.gateway import Clock
from tests.unit.conftest import Make
from tests.unit.test_guard import (
    ADMIN,
    DELETE,
    ONCE_POLICY,
    PAGE,
    POLICY,
    decisions,
    grant_answering,
    signed_in,
)
from tests.unit.test_guard_rules import BOUND_POLICY, EXPORT, PAY, REPORT_POLICY

PUBLIC = RequestContext(method="GET", host="app.test", path="/static/app.js",
                        client_ip="198.51.100.7")
AWAY = RequestContext(method="GET", host="app.test", path="/orders",
                      client_ip="203.0.113.9")  # another network than the sign-in's
@pytest.fixture
def rt(make: Make) -> Runtime:
    return make()




def counted_reads(rt: Runtime) -> list[object]:
    """The `connect` argument of each decision read the store gets from now on."""
    read, asked = rt.store.session_states.read, []

    def counting(token_hash: str, **kwargs: Any) -> Any:
        asked.append(kwargs.get("connect", True))
        return read(token_hash, **kwargs)

    rt.store.session_states.read = counting  # type: ignore[method-assign]
    return asked


def entry_of(rt: Runtime, **fields: object) -> Any:
    """The one decision entry with these fields."""
    [found] = [e for e in decisions(rt)
               if all(getattr(e, name) == value for name, value in fields.items())]
    return found


def keyed(rt: Runtime, context: RequestContext) -> dict[str, object]:
    """The request as a ledger entry holds it (empty fields left out)."""
    return {k: v for k, v in request_summary(context, ip_key=rt.ip_key).items() if v}


def counter(rt: Runtime, name: str, **labels: str) -> float:
    return rt.observer.registry.get_sample_value(name, labels) or 0.0


class AwaitedReads:
    """`VersionBatches` over the memory store, read past any wrapper put on it later."""

    def __init__(self, store: MemoryStore) -> None:
        self.read_now, self.reads = store.session_states.read, 0

    async def read(self, token_hash: str) -> Versions | None:
        self.reads += 1
        found = self.read_now(token_hash, known=(0, 0), now=0.0)
        if found is None:
            return None
        return found if isinstance(found, Versions) else found.versions


def batched(guard: Guard, rt: Runtime) -> AwaitedReads:
    reads = AwaitedReads(rt.store)  # type: ignore[arg-type]
    guard._batches = reads  # type: ignore[assignment]  # noqa: SLF001 — the PostgreSQL wiring
    return reads


def cached_and_batched(rt: Runtime) -> tuple[Guard, AwaitedReads, SessionRecord, str]:
    """A guard with awaited reads and a signed-in session already in its cache."""
    guard = Guard(rt)
    reads = batched(guard, rt)
    _, session, token = signed_in(rt)
    guard.check(PAGE, token)
    return guard, reads, session, token


# ------------------------------------------------------------------ the version board (SQLite)


def test_a_copy_confirmed_once_is_trusted_on_the_version_board_until_it_changes(
        make: Make) -> None:
    rt = make(sqlite=True)
    guard = Guard(rt)
    _, session, token = signed_in(rt)
    asked = counted_reads(rt)
    for _ in range(4):
        assert guard.check(PAGE, token).session is not None
    assert len(asked) == 2  # the load, the read that took the board's mark; then no read
    rt.store.sessions.add_event(session.id, AuthEvent(factor="totp", amr=("otp",),
                                                      level=Level.AAL2, at=rt.now()))
    assert guard.check(PAGE, token).decision.level is Level.AAL2  # the board moved: reloaded
    assert guard.check(PAGE, token).decision.level is Level.AAL2
    assert len(asked) == 3  # the reload kept the mark taken before it


def test_a_revocation_moves_the_board_and_ends_the_trusted_copy(make: Make) -> None:
    rt = make(sqlite=True)
    guard = Guard(rt)
    _, session, token = signed_in(rt)
    for _ in range(3):
        assert guard.check(PAGE, token).session is not None  # trusted on the board
    rt.store.sessions.revoke(session.id, now=rt.now())
    assert guard.check(PAGE, token).session is None


@pytest.mark.parametrize("step_back", [False, True])
def test_a_board_hit_reaches_the_store_once_a_full_second_passed_without_contact(
        make: Make, clock: Clock, step_back: bool) -> None:
    """A board hit needs a store contact within the last second, and not in the future: after
    the clock steps back, `now - contact` is negative, which is no recent contact."""
    rt = make(sqlite=True)
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    for _ in range(2):
        guard.check(PAGE, token)

    def down(token_hash: str, **kwargs: Any) -> Any:
        raise StoreUnavailable("the store is down")

    rt.store.session_states.read = down  # type: ignore[method-assign]
    if step_back:
        clock.advance(-10)
    else:
        clock.advance(STORE_CONTACT_EVERY / 2)
        assert guard.check(PAGE, token).decision.allowed  # the board answers alone a while
        clock.advance(STORE_CONTACT_EVERY / 2)  # exactly a second after the last read
    with pytest.raises(StoreUnavailable):
        guard.check(PAGE, token)


# ------------------------------------------------------------------ the event loop's reads


def test_the_event_loop_path_never_reconnects_but_the_thread_path_does(rt: Runtime) -> None:
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    guard.check(PAGE, token)
    read, asked = rt.store.session_states.read, []

    def drops_once(token_hash: str, *, connect: bool = True, **kwargs: Any) -> Any:
        asked.append(connect)
        if len(asked) == 1:
            raise StoreUnavailable("connection lost")
        return read(token_hash, connect=connect, **kwargs)

    rt.store.session_states.read = drops_once  # type: ignore[method-assign]
    assert guard.check_cached(ADMIN, token) is None  # not retried on the loop: the thread's turn
    assert guard.check(ADMIN, token).decision.outcome is Outcome.STEP_UP
    assert asked == [False, True]


def test_the_awaited_read_answers_a_cached_session_with_no_blocking_read(rt: Runtime) -> None:
    guard, reads, session, token = cached_and_batched(rt)
    blocking = counted_reads(rt)
    check = asyncio.run(guard.check_cached_key_async(PAGE, hash_token(token)))
    assert check is not None and check.decision.allowed
    assert check.session is not None and check.session.id == session.id
    assert (reads.reads, blocking) == (1, [])


def test_the_awaited_read_is_used_up_to_the_audit_backlog_limit_and_not_above(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    guard, reads, _, token = cached_and_batched(rt)
    blocking = counted_reads(rt)
    backlog = AUDIT_INLINE_LIMIT
    monkeypatch.setattr(type(rt.audit), "backlog", property(lambda _: backlog))
    assert asyncio.run(guard.check_cached_key_async(PAGE, hash_token(token))) is not None
    assert (reads.reads, blocking) == (1, [])
    backlog = AUDIT_INLINE_LIMIT + 1
    assert asyncio.run(guard.check_cached_key_async(PAGE, hash_token(token))) is None
    assert (reads.reads, blocking) == (1, [])  # straight to the thread path, nothing read


def test_the_awaited_path_answers_a_request_without_a_session_inline(rt: Runtime) -> None:
    guard = Guard(rt)
    reads = batched(guard, rt)
    check = asyncio.run(guard.check_cached_key_async(PUBLIC, None))
    assert check is not None and check.decision.allowed and check.session is None
    assert reads.reads == 0


def test_without_batched_reads_the_awaited_path_answers_as_the_cached_one(rt: Runtime) -> None:
    guard = Guard(rt)
    _, session, token = signed_in(rt)
    guard.check(PAGE, token)
    check = asyncio.run(guard.check_cached_key_async(PAGE, hash_token(token)))
    assert check is not None and check.decision.allowed and check.context is PAGE
    assert check.session is not None and check.session.id == session.id


def test_a_load_in_flight_sends_both_inline_paths_to_the_thread(rt: Runtime) -> None:
    guard, reads, _, token = cached_and_batched(rt)
    key = hash_token(token)
    with guard.cache.flight(key):
        assert guard.check_cached(PAGE, token) is None
        assert asyncio.run(guard.check_cached_key_async(PAGE, key)) is None
    assert reads.reads == 0
    assert guard.check_cached(PAGE, token) is not None


def test_an_allowed_amount_is_left_to_the_thread_path_which_records_it(rt: Runtime) -> None:
    guard = Guard(rt)
    user, _, token = signed_in(rt)
    guard.check(PAGE, token)
    paid = RequestContext(method="POST", host="app.test", path="/orders",
                          client_ip="198.51.100.7", attributes={"amount": 120})
    assert guard.check_cached(paid, token) is None
    assert rt.store.history.load(user.id).amounts == ()
    assert guard.check(paid, token).decision.allowed
    assert rt.store.history.load(user.id).amounts == (120.0,)


# ------------------------------------------------------------------ loads without a cookie


def test_without_a_session_cookie_no_store_is_asked(rt: Runtime) -> None:
    guard = Guard(rt)
    rt.store.down = True  # type: ignore[attr-defined]
    assert guard.load(None) is None
    assert guard.session_for(None) is None
    assert guard.check(PUBLIC, None).decision.allowed
    assert guard.check(PAGE, None).decision.login


def test_session_for_gives_a_live_tokens_session_and_user(rt: Runtime) -> None:
    guard = Guard(rt)
    user, session, token = signed_in(rt)
    found = guard.session_for(token)
    assert found is not None
    assert (found[0].id, found[1].id) == (session.id, user.id)
    assert guard.session_for("token-of-nobody-" + "x" * 32) is None


def test_a_decision_by_token_hash_is_audited_unless_told_not_to(rt: Runtime) -> None:
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    guard.check_key(ADMIN, hash_token(token), audit=False)
    assert decisions(rt) == []
    assert guard.check_key(ADMIN, hash_token(token)).decision.outcome is Outcome.STEP_UP
    assert entry_of(rt, decision="step_up").rule == "admin"


# ------------------------------------------------------------------ answers given again


def test_an_allow_for_a_request_with_attributes_is_decided_every_time(
        rt: Runtime, decides: list[RequestContext]) -> None:
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    tagged = RequestContext(method="GET", host="app.test", path="/orders",
                            client_ip="198.51.100.7", attributes={"ticket": "T-1"})
    assert guard.check(tagged, token).decision.allowed
    for _ in range(2):
        check = guard.check_cached(tagged, token)
        assert check is not None and check.decision.allowed
    assert len(decides) == 3


@pytest.mark.parametrize("with_key", [False, True])
def test_an_allow_judged_with_a_detail_of_its_own_is_not_given_again(
        rt: Runtime, decides: list[RequestContext], with_key: bool) -> None:
    """The MCP door's allows carry a detail (and no key): each is its own entry, and the next
    request for the same context is decided afresh."""
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    loaded = guard.load(token)
    assert loaded is not None
    key = hash_token(token) if with_key else None
    assert guard.judge(PAGE, loaded, key=key, detail={"door": "mcp"}).decision.allowed
    assert loaded.answers == {}
    assert guard.check_cached(PAGE, token) is not None
    assert len(decides) == 2


def test_a_sessionless_public_request_is_allowed_by_every_door(rt: Runtime) -> None:
    guard = Guard(rt)
    assert guard.check(PUBLIC, None).decision.allowed
    assert guard.judge(PUBLIC, None).decision.allowed


def test_a_door_holding_a_copy_that_left_the_cache_still_notes_it_as_seen(
        rt: Runtime, clock: Clock) -> None:
    guard = Guard(rt)
    _, session, token = signed_in(rt)
    loaded = guard.load(token)
    assert loaded is not None
    key = hash_token(token)
    guard.cache.drop(key)
    clock.advance(TOUCH_EVERY)
    assert guard.judge(PAGE, loaded, key=key).decision.allowed
    assert guard.cache.get(key) is None
    rt.last_seen.flush()
    stored = rt.store.sessions.get(session.id)
    assert stored is not None and stored.last_seen == clock.now


# ------------------------------------------------------------------ bearer states


def state_of(guard: Guard, rt: Runtime, *events: AuthEvent) -> Any:
    """A signed-in session's state (with more authentication events), as a bearer holds it."""
    _, session, token = signed_in(rt)
    for event in events:
        rt.store.sessions.add_event(session.id, event)
    loaded = guard.load(token)
    assert loaded is not None
    return loaded.state


def test_a_bearer_states_proof_is_aged_at_the_current_time(rt: Runtime, clock: Clock) -> None:
    guard = Guard(rt)
    state = state_of(guard, rt, AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2,
                                          at=clock.now - 7200))  # older than admin's 1 h
    check = guard.judge_token(ADMIN, state, grant_for=lambda decision: None)
    assert check.decision.outcome is Outcome.STEP_UP


def test_a_bearer_states_expired_reusable_stand_in_is_refused(make: Make,
                                                               clock: Clock) -> None:
    rt = make(policy=ONCE_POLICY)
    guard = Guard(rt)
    state = state_of(guard, rt)

    def expired(decision: Decision) -> Any:
        return build.grant(state.id, subject_id=state.subject.id, scope=decision.scope,
                           binding=decision.binding, granted_at=clock.now - 600,
                           expires_at=clock.now - 1, single_use=False)

    assert guard.judge_token(DELETE, state, grant_for=expired).decision.outcome \
        is Outcome.STEP_UP


def test_a_stand_in_is_asked_only_of_a_signed_in_state_the_policy_steps_up(
        make: Make) -> None:
    rt = make(policy=ONCE_POLICY)
    guard = Guard(rt)
    state = state_of(guard, rt)
    asked: list[Decision] = []

    def grant_for(decision: Decision) -> None:
        asked.append(decision)

    assert guard.judge_token(PUBLIC, state, grant_for=grant_for).decision.allowed
    assert guard.judge_token(PAGE, state, grant_for=grant_for).decision.allowed
    assert guard.judge_token(DELETE, None, grant_for=grant_for).decision.login
    assert asked == []


def test_a_bearer_stand_in_is_spent_recorded_and_audited_with_the_doors_detail(
        make: Make, clock: Clock) -> None:
    rt = make(policy=ONCE_POLICY)
    guard = Guard(rt)
    state = state_of(guard, rt)
    made: list[Any] = []

    def grant_for(decision: Decision) -> Any:
        made.append(grant_answering(decision, state.id, state.subject.id,
                                    granted_at=clock.now, expires_at=clock.now + 300))
        return made[-1]

    check = guard.judge_token(DELETE, state, grant_for=grant_for, detail={"door": "bearer"})
    assert check.decision.allowed and check.grants == (made[0],)
    entry = entry_of(rt, rule="delete-repo")
    assert entry.outcome == "allow"
    assert entry.subject == state.subject.id
    assert entry.detail["door"] == "bearer"
    assert entry.detail["grant"] == made[0].id
    assert entry.detail["consumed"] is True
    assert len(entry.detail["input"]["grants"]) == 1


def test_a_bound_transaction_refused_to_a_bearer_asks_no_level(make: Make) -> None:
    rt = make(policy=BOUND_POLICY)
    guard = Guard(rt)
    state = state_of(guard, rt)
    check = guard.judge_token(PAY, state, grant_for=lambda decision: None)
    assert check.decision.outcome is Outcome.DENY
    entry = entry_of(rt, decision="deny")
    assert entry.detail["binding"] == check.decision.binding != ""
    assert "level" not in entry.detail


def test_a_bound_step_up_entry_names_the_binding_and_the_level(make: Make) -> None:
    rt = make(policy=BOUND_POLICY)
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    check = guard.check(PAY, token)
    assert check.decision.outcome is Outcome.STEP_UP
    detail = entry_of(rt, decision="step_up").detail
    assert (detail["binding"], detail["level"]) == (check.decision.binding, "aal2")


# ------------------------------------------------------------------ other doors' entry points


def test_a_request_refused_before_the_policy_is_audited_with_why(rt: Runtime) -> None:
    guard = Guard(rt)
    decision = Decision(outcome=Outcome.STEP_UP, rule="bearer-token",
                        reasons=("The access token has expired.",))
    check = guard.refused(PAGE, decision, outcome="invalid_token", detail={"error": "expired"})
    assert check.decision is decision and check.context is PAGE
    assert (check.session, check.user, check.risk) == (None, None, NO_RISK)
    entry = entry_of(rt, rule="bearer-token")
    assert (entry.decision, entry.outcome) == ("step_up", "invalid_token")
    assert tuple(entry.reasons) == decision.reasons
    assert (entry.subject, entry.session) == ("", "")
    assert entry.detail["error"] == "expired"
    assert entry.detail["risk_level"] == "low"


def test_a_previewed_allow_is_settled_with_the_doors_detail(rt: Runtime) -> None:
    guard = Guard(rt)
    user, _, token = signed_in(rt)
    preview = guard.preview(PAGE, guard.load(token))
    check = guard.judge_preview(preview, detail={"door": "mcp"})
    assert check.decision is preview.decision and check.context is PAGE
    entry = entry_of(rt, outcome="allow")
    assert entry.subject == user.id
    assert entry.detail["door"] == "mcp"


def test_with_attributes_adds_to_the_requests_own() -> None:
    context = RequestContext(method="POST", host="app.test", path="/pay",
                             attributes={"amount": 5})
    added = with_attributes(context, {"currency": "EUR"})
    assert added.attributes == {"amount": 5, "currency": "EUR"}
    assert (added.method, added.host, added.path) == ("POST", "app.test", "/pay")
    assert context.attributes == {"amount": 5}


# ------------------------------------------------------------------ deciding


def test_a_grant_lost_to_another_request_is_decided_again_at_the_current_time(
        make: Make, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other grant left had expired meanwhile: the decision made again without the lost
    one must not take it."""
    rt = make(policy=ONCE_POLICY)
    guard = Guard(rt)
    user, session, token = signed_in(rt)
    asked = guard.check(DELETE, token).decision
    rt.store.grants.add(grant_answering(asked, session.id, user.id, granted_at=clock.now,
                                        expires_at=clock.now + 300))
    rt.store.grants.add(build.grant(session.id, subject_id=user.id, scope=asked.scope,
                                    binding=asked.binding, granted_at=clock.now,
                                    expires_at=clock.now + 10, single_use=False))
    loaded = guard.load(token)
    assert loaded is not None and len(loaded.grants) == 2
    clock.advance(20)
    monkeypatch.setattr(rt.store.grants, "consume", lambda *a, **k: False)  # lost the race
    assert guard.check(DELETE, token).decision.outcome is Outcome.STEP_UP


def test_a_session_used_from_another_network_raises_its_risk(rt: Runtime) -> None:
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    assert guard.check(AWAY, token).risk.names == ("session_ip_changed",)
    assert guard.check(PAGE, token).risk.names == ()


def test_a_decision_keeps_the_grants_it_was_made_from(make: Make, clock: Clock) -> None:
    rt = make(policy=ONCE_POLICY)
    guard = Guard(rt)
    user, session, token = signed_in(rt)
    asked = guard.check(DELETE, token).decision
    grant = grant_answering(asked, session.id, user.id, granted_at=clock.now,
                            expires_at=clock.now + 300)
    rt.store.grants.add(grant)
    check = guard.check(DELETE, token)
    assert check.decision.grant_id == grant.id
    assert [g.id for g in check.grants] == [grant.id]
    entry = entry_of(rt, outcome="allow")
    assert len(entry.detail["input"]["grants"]) == 1
    assert (entry.detail["grant"], entry.detail["consumed"]) == (grant.id, True)


# ------------------------------------------------------------------ audit entries and counters


def test_a_step_up_entry_names_its_subject_reasons_and_keyed_request(make: Make) -> None:
    rt = make(audit="{pseudonymise_ips: true}", ip_key=True)
    guard = Guard(rt)
    user, session, token = signed_in(rt)
    check = guard.check(ADMIN, token)
    entry = entry_of(rt, decision="step_up")
    assert (entry.subject, entry.session) == (user.id, rt.session_ref(session.id))
    assert tuple(entry.reasons) == check.decision.reasons != ()
    assert dict(entry.request) == keyed(rt, ADMIN)
    assert entry.request["client_ip"] != ADMIN.client_ip


def test_a_sign_in_asked_of_a_request_without_a_session_is_a_login_entry(rt: Runtime) -> None:
    Guard(rt).check(PAGE, None)
    entry = entry_of(rt, decision="step_up")
    assert (entry.outcome, entry.subject, entry.session) == ("login", "", "")


def test_a_sealed_allow_names_its_session_and_keyed_request(make: Make) -> None:
    rt = make(audit="{allows: every_request, pseudonymise_ips: true}", ip_key=True)
    guard = Guard(rt)
    user, session, token = signed_in(rt)
    guard.check(PAGE, token)
    entry = entry_of(rt, outcome="allow")
    assert (entry.subject, entry.session) == (user.id, rt.session_ref(session.id))
    assert dict(entry.request) == keyed(rt, PAGE)
    assert entry.request["client_ip"] != PAGE.client_ip


def test_a_sealed_allow_records_only_the_declared_attributes(make: Make) -> None:
    rt = make(policy=POLICY.replace("rules:\n", "attributes:\n  ticket: string\nrules:\n"))
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    tagged = RequestContext(method="GET", host="app.test", path="/orders",
                            client_ip="198.51.100.7", attributes={"ticket": "T-1", "note": "x"})
    assert guard.check(tagged, token).decision.allowed
    entry = entry_of(rt, outcome="allow")  # attributes: its own entry
    assert entry.detail["input"]["attrs"] == {"ticket": "T-1"}


def test_a_plain_allow_at_raised_risk_is_its_own_entry(make: Make) -> None:
    rt = make(extra="risk: {weights: {session_ip_changed: 40}}\n")
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    check = guard.check(AWAY, token)
    assert check.decision.allowed and check.risk.level == "medium"
    entry = entry_of(rt, outcome="allow")
    assert entry.detail["risk_level"] == "medium"


def test_allows_are_counted_by_rule_whether_decided_or_given_again(rt: Runtime) -> None:
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    guard.check(PAGE, token)
    for _ in range(2):
        assert guard.check_cached(PAGE, token) is not None
    assert counter(rt, "stepguard_decisions_total", outcome="allow", rule="default") == 3


def test_a_summary_line_opened_by_an_answer_given_again_names_its_host(
        rt: Runtime, clock: Clock) -> None:
    guard = Guard(rt)
    user, _, token = signed_in(rt)
    guard.check(PAGE, token)
    clock.advance(61)  # the next summary interval
    assert guard.check_cached(PAGE, token) is not None
    lines = [e for e in decisions(rt) if e.outcome == "allow_summary"]  # type: ignore[attr-defined]
    assert [(e.subject, e.request["host"], e.detail["count"]) for e in lines] == [
        (user.id, "app.test", 1), (user.id, "app.test", 1)]


def test_a_sessionless_plain_allow_is_summarised_with_no_subject(rt: Runtime) -> None:
    Guard(rt).check(PUBLIC, None)
    line = entry_of(rt, outcome="allow_summary")
    assert (line.subject, line.session, line.rule) == ("", "", "public")


def test_a_step_up_on_a_session_with_a_full_event_list_starts_a_new_summary_line(
        rt: Runtime, clock: Clock) -> None:
    """The list keeps its length once full: the newest event's time tells the inputs apart."""
    guard = Guard(rt)
    user = build.user("dora", created=clock.now)
    rt.store.users.add(user)
    token = "token-of-dora-" + "z" * 32
    events = tuple(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1,
                             at=clock.now - SESSION_EVENT_LIMIT + i)
                   for i in range(SESSION_EVENT_LIMIT))
    session = build.session(user.id, token_hash=hash_token(token), created=clock.now - 100,
                            last_seen=clock.now, ip=PAGE.client_ip, user_agent=PAGE.user_agent,
                            events=events)
    rt.store.sessions.add(session)
    guard.check(PAGE, token)
    rt.store.sessions.add_event(session.id, AuthEvent(factor="totp", amr=("otp",),
                                                      level=Level.AAL2, at=clock.now))
    guard.check(PAGE, token)
    lines = [e for e in decisions(rt) if e.outcome == "allow_summary"]  # type: ignore[attr-defined]
    assert [len(e.detail["input"]["session"]["events"]) for e in lines] == [  # type: ignore[attr-defined]
        SESSION_EVENT_LIMIT, SESSION_EVENT_LIMIT]
    assert [e.detail["count"] for e in lines] == [1, 1]  # type: ignore[attr-defined]


def test_a_report_rule_counts_what_it_would_have_done(make: Make) -> None:
    rt = make(policy=REPORT_POLICY)
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    assert guard.check(EXPORT, token).decision.allowed
    assert counter(rt, "stepguard_shadow_decisions_total", outcome="step_up",
                   rule="new-export") == 1


def test_a_sealed_allow_is_served_and_logged_in_debug_mode(make: Make) -> None:
    rt = make(audit="{allows: every_request}")
    rt.observer.debug = True
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    assert guard.check(PAGE, token).decision.allowed
    assert entry_of(rt, outcome="allow").rule == "default"


def test_a_sealed_allow_is_counted_once_in_debug_mode(make: Make) -> None:
    rt = make(audit="{allows: every_request}")
    rt.observer.debug = True
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    guard.check(PAGE, token)
    assert counter(rt, "stepguard_decisions_total", outcome="allow", rule="default") == 1


def test_a_remembered_allow_ends_with_the_hour_it_was_decided_in(make: Make,
                                                                clock: Clock) -> None:
    """The answer's end counts from the decision's clock reading (`Check.at`), not from when
    it was remembered: decided at 16:59:59.9 and remembered after 17:00, it ends at 17:00."""
    rt = make(sqlite=True)
    guard = Guard(rt)
    _, _, token = signed_in(rt)
    hour_end = (clock.now // 3600 + 1) * 3600
    clock.now = hour_end - 0.1
    check = guard.check(PAGE, token, audit=False)
    assert check.at == hour_end - 0.1
    loaded = guard.load(token)
    assert loaded is not None
    clock.now = hour_end + 0.1
    guard._remember(loaded, check)
    assert loaded.answers[id(PAGE)].until == hour_end

