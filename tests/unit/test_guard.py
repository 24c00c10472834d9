"""Guard on the in-memory store: the per-session cache, its invalidation (SECURITY.md case 12),
single-flight loads, last-seen written behind, and failing closed."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import StoreUnavailable
from stepguard.core.levels import Level
from stepguard.service.guard import TOUCH_EVERY, Guard, Loaded, SessionCache
from stepguard.service.runtime import MAX_TOKEN, Runtime, build_runtime, hash_token
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import SessionRecord, SessionSnapshot, UserRecord, Versions
from tests.contract import build
from tests.support.gateway import Clock, write_config

POLICY = """\
levels:
  aal1: {max_session: 30d, idle: 1h}
  aal2: {acr: "urn:stepguard:aal2", max_session: 24h, idle: 1h}
rules:
  - name: public
    match: {paths: ["/static/**"]}
    allow: true
  - name: admin
    match: {paths: ["/admin/**"]}
    require: {level: aal2, max_age: 1h, reason: "Opening the admin console"}
default: {level: aal1}
"""
PAGE = RequestContext(method="GET", host="app.test", path="/orders", client_ip="198.51.100.7")
ADMIN = RequestContext(method="GET", host="app.test", path="/admin/users",
                       client_ip="198.51.100.7")


class CountingStore(MemoryStore):
    """Counts the decision reads and the full loads among them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.loads = 0
        read = self.session_states.read

        def counted(token_hash: str, **kwargs: object) -> object:
            found = read(token_hash, **kwargs)  # type: ignore[arg-type]
            self.reads += 1
            self.loads += isinstance(found, SessionSnapshot)
            return found

        self.session_states.read = counted  # type: ignore[method-assign]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def runtime(tmp_path: Path, clock: Clock, store: CountingStore) -> Iterator[Runtime]:
    loaded = load_config(write_config(tmp_path, policy=POLICY))
    rt = build_runtime(loaded, clock=clock, store=store, audit_log=MemoryAuditLog())
    yield rt
    rt.close()


def grant_answering(decision: Any, session_id: str, subject_id: str, *, granted_at: float,
                    expires_at: float) -> Any:
    """A grant for the scope and binding the step-up `decision` asked for."""
    return build.grant(session_id, subject_id=subject_id, scope=decision.scope,
                       binding=decision.binding, granted_at=granted_at, expires_at=expires_at)


def signed_in(runtime: Runtime, name: str = "alice") -> tuple[UserRecord, SessionRecord, str]:
    user = build.user(name, created=runtime.now())
    runtime.store.users.add(user)
    token = f"token-of-{name}-" + "x" * 32
    now = runtime.now()
    session = build.session(user.id, token_hash=hash_token(token), created=now, last_seen=now,
                            ip=PAGE.client_ip, user_agent=PAGE.user_agent,
                            events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1,
                                              at=now),))
    runtime.store.sessions.add(session)
    return user, session, token


def test_a_cached_session_costs_one_read_and_no_load(runtime: Runtime,
                                                     store: CountingStore) -> None:
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    assert guard.check(PAGE, token).decision.outcome is Outcome.ALLOW
    for _ in range(5):
        assert guard.check(PAGE, token).decision.outcome is Outcome.ALLOW
    assert (store.reads, store.loads) == (6, 1)
    assert (guard.cache.hits, guard.cache.misses) == (5, 1)


def test_other_users_sign_ins_and_step_ups_leave_this_session_cached(
        runtime: Runtime, store: CountingStore) -> None:
    guard = Guard(runtime)
    _, _, token = signed_in(runtime, "alice")
    bob, bobs, _ = signed_in(runtime, "bob")
    guard.check(PAGE, token)
    runtime.store.sessions.add_event(bobs.id, AuthEvent(factor="totp", amr=("otp",),
                                                        level=Level.AAL2, at=runtime.now()))
    runtime.store.grants.add(build.grant(bobs.id, subject_id=bob.id))
    runtime.store.history.record_failure(bob.id, at=runtime.now())
    runtime.store.sessions.revoke(bobs.id, now=runtime.now())
    loads = store.loads
    assert guard.check(PAGE, token).session is not None
    assert store.loads == loads  # no reload: per-session invalidation, not a global one


@pytest.mark.parametrize("how", ["revoke", "revoke_all", "disable", "rotate"])
def test_a_revocation_is_honoured_by_the_very_next_request(runtime: Runtime, how: str) -> None:
    guard = Guard(runtime)
    user, session, token = signed_in(runtime)
    assert guard.check(PAGE, token).session is not None  # cached
    now = runtime.now()
    {"revoke": lambda: runtime.store.sessions.revoke(session.id, now=now),
     "revoke_all": lambda: runtime.store.sessions.revoke_all_for_user(user.id, now=now),
     "disable": lambda: runtime.store.users.set_disabled(user.id, True, now=now),
     "rotate": lambda: runtime.store.sessions.rotate(session.id, "other", now=now)}[how]()
    assert guard.check(PAGE, token).session is None
    assert guard.check_cached(PAGE, token) is None  # the event loop path agrees
    assert versions_now(guard, hash_token(token), PAGE) is None  # and the PostgreSQL door's check


def versions_now(guard: Guard, key: str, context: RequestContext) -> tuple[int, int] | None:
    """The versions of `Guard.lease` (what the PostgreSQL door compares before a statement)."""
    lease = guard.lease(key, context)
    return lease.versions if lease is not None else None


def test_the_revocation_check_of_a_held_session_reads_its_versions_now(runtime: Runtime) -> None:
    """`Guard.lease` (what the PostgreSQL door compares before each statement) gives the live
    cached session's versions, and they move when the session does."""
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    assert versions_now(guard, hash_token(token), PAGE) is None  # not cached: the full path
    loaded = guard.load(token)
    assert loaded is not None
    assert versions_now(guard, hash_token(token), PAGE) == loaded.versions
    runtime.store.sessions.add_event(session.id, AuthEvent(
        factor="totp", amr=("otp",), level=Level.AAL2, at=runtime.now()))
    assert versions_now(guard, hash_token(token), PAGE) not in (None, loaded.versions)


def test_a_step_up_elsewhere_is_honoured_by_the_cached_copy(runtime: Runtime) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    assert guard.check(ADMIN, token).decision.outcome is Outcome.STEP_UP
    runtime.store.sessions.add_event(session.id, AuthEvent(
        factor="totp", amr=("otp",), level=Level.AAL2, at=runtime.now()))
    assert guard.check(ADMIN, token).decision.outcome is Outcome.ALLOW


def test_concurrent_misses_on_one_token_load_it_once(runtime: Runtime,
                                                      store: CountingStore) -> None:
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def request() -> None:
        barrier.wait()
        results.append(guard.check(PAGE, token).session is not None)

    threads = [threading.Thread(target=request) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 16
    assert store.loads == 1 and store.reads == 16


def test_last_seen_is_written_behind_in_batches(runtime: Runtime, clock: Clock) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    guard.check(PAGE, token)
    clock.advance(TOUCH_EVERY + 1)
    check = guard.check_cached(PAGE, token)  # a due touch no longer leaves the event loop
    assert check is not None and check.decision.allowed
    stored = runtime.store.sessions.get(session.id)
    assert stored is not None and stored.last_seen == session.last_seen  # not yet written
    runtime.last_seen.flush()
    stored = runtime.store.sessions.get(session.id)
    assert stored is not None and stored.last_seen == clock.now


def test_a_session_seen_on_another_instance_stays_alive(runtime: Runtime, clock: Clock) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    guard.check(PAGE, token)  # cached with the sign-in's last-seen
    for _ in range(3):  # another instance keeps it active for 1.5 h (aal1 idle: 1 h)
        clock.advance(1800)
        runtime.store.sessions.touch_many([(session.id, clock.now, "198.51.100.7", "")])
    assert guard.check(PAGE, token).session is not None


def test_an_idle_session_is_refused(runtime: Runtime, clock: Clock) -> None:
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    guard.check(PAGE, token)
    clock.advance(3601)  # the aal1 idle limit here is 1 h
    assert guard.check(PAGE, token).session is None


def test_a_store_outage_fails_closed_even_when_cached(runtime: Runtime,
                                                      store: CountingStore) -> None:
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    guard.check(PAGE, token)
    store.down = True
    with pytest.raises(StoreUnavailable):
        guard.check(PAGE, token)
    assert guard.check_cached(PAGE, token) is None  # the thread path then fails closed


@pytest.mark.parametrize("cached", [False, True])
def test_a_connection_lost_once_is_retried_on_a_fresh_one(runtime: Runtime, store: CountingStore,
                                                          clock: Clock, cached: bool) -> None:
    """A store restart drops the open connection: the thread path retries once, with the same
    question, and answers as before (SECURITY.md case 16: service resumes by itself); a revoked
    session stays revoked through the retry."""
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    if cached:
        guard.check(PAGE, token)
        clock.advance(3600)  # past STORE_CONTACT_EVERY: the copy is read, not trusted
    read, asked = store.session_states.read, []

    def drops_once(token_hash: str, **kwargs: object) -> object:
        asked.append((token_hash, kwargs.get("known"), kwargs.get("now")))
        if len(asked) == 1:
            raise StoreUnavailable("connection lost")
        return read(token_hash, **kwargs)

    store.session_states.read = drops_once  # type: ignore[method-assign]
    assert guard.check(PAGE, token).session is not None
    assert len(asked) == 2 and asked[0] == asked[1]
    runtime.store.sessions.revoke(session.id, now=clock.now)
    asked.clear()
    assert guard.check(PAGE, token).session is None


# ------------------------------------------------------------------------------ audit


def decisions(runtime: Runtime) -> list[object]:
    runtime.audit.flush(timeout=5)
    return [e for e in runtime.audit_log.entries() if e.kind == "decision"]


def test_plain_allows_are_summarised_and_everything_else_is_its_own_entry(
        runtime: Runtime) -> None:
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    for _ in range(20):
        assert guard.check(PAGE, token).decision.allowed
    assert guard.check(ADMIN, token).decision.outcome is Outcome.STEP_UP
    runtime.store.sessions.add_event(session.id, AuthEvent(
        factor="totp", amr=("otp",), level=Level.AAL2, at=runtime.now()))
    for _ in range(3):
        assert guard.check(ADMIN, token).decision.allowed  # a rule with a requirement
    entries = decisions(runtime)
    assert [(e.rule, e.outcome) for e in entries] == [  # type: ignore[attr-defined]
        ("admin", "step_up"), ("admin", "allow"), ("admin", "allow"), ("admin", "allow"),
        ("default", "allow_summary")]
    assert entries[-1].detail["count"] == 20  # type: ignore[attr-defined]
    assert entries[-1].session == runtime.session_ref(session.id)  # type: ignore[attr-defined]


def test_every_request_mode_seals_each_allow(tmp_path: Path, clock: Clock) -> None:
    loaded = load_config(write_config(tmp_path, policy=POLICY,
                                      extra="audit: {allows: every_request}\n"))
    runtime = build_runtime(loaded, clock=clock, store=MemoryStore(),
                            audit_log=MemoryAuditLog())
    try:
        guard = Guard(runtime)
        _, _, token = signed_in(runtime)
        for _ in range(4):
            guard.check(PAGE, token)
        assert [e.outcome for e in decisions(runtime)] == ["allow"] * 4  # type: ignore[attr-defined]
    finally:
        runtime.close()


# ------------------------------------------------------------------------------ answers given again


def guard_with(tmp_path: Path, clock: Clock, policy: str = POLICY,
               extra: str = "") -> tuple[Guard, Runtime]:
    loaded = load_config(write_config(tmp_path, policy=policy, extra=extra))
    runtime = build_runtime(loaded, clock=clock, store=MemoryStore(), audit_log=MemoryAuditLog())
    return Guard(runtime), runtime


def test_a_plain_allow_is_given_again_for_the_same_context_and_audited(
        runtime: Runtime, decides: list[RequestContext]) -> None:
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    assert guard.check(PAGE, token).decision.allowed  # loaded and decided in a thread
    for _ in range(5):
        check = guard.check_cached(PAGE, token)
        assert check is not None and check.decision.allowed
    assert len(decides) == 1
    other = RequestContext(method="GET", host="app.test", path="/orders",
                           client_ip="198.51.100.7")  # equal, but another request's reading
    assert guard.check_cached(other, token) is not None and len(decides) == 2
    summary = [e for e in decisions(runtime) if e.outcome == "allow_summary"]  # type: ignore[attr-defined]
    assert summary[0].detail["count"] == 7  # type: ignore[attr-defined]


def test_a_summarised_allow_records_what_it_was_decided_from(runtime: Runtime) -> None:
    """The summary keeps the decision's inputs (the session's state and the risk), so the
    what-if replay of a policy change can decide these requests again."""
    guard = Guard(runtime)
    _, session, token = signed_in(runtime)
    check = guard.check(PAGE, token)
    assert check.decision.allowed
    [summary] = [e for e in decisions(runtime) if e.outcome == "allow_summary"]  # type: ignore[attr-defined]
    recorded = summary.detail["input"]  # type: ignore[attr-defined]
    assert recorded["session"]["created"] == session.created
    assert recorded["session"]["events"] == [["password", "aal1", session.created, ["pwd"]]]
    assert summary.detail["risk_level"] == check.risk.level  # type: ignore[attr-defined]
    assert summary.detail["risk_score"] == check.risk.score  # type: ignore[attr-defined]
    assert summary.detail["signals"] == list(check.risk.names)  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["revoke", "disable", "step_up"])
def test_a_change_to_the_session_ends_the_answers_given_again(
        runtime: Runtime, decides: list[RequestContext], how: str) -> None:
    guard = Guard(runtime)
    user, session, token = signed_in(runtime)
    guard.check(PAGE, token)
    assert guard.check_cached(PAGE, token) is not None
    now = runtime.now()
    {"revoke": lambda: runtime.store.sessions.revoke(session.id, now=now),
     "disable": lambda: runtime.store.users.set_disabled(user.id, True, now=now),
     "step_up": lambda: runtime.store.sessions.add_event(session.id, AuthEvent(
         factor="totp", amr=("otp",), level=Level.AAL2, at=now))}[how]()
    check = guard.check_cached(PAGE, token)
    if how == "step_up":  # decided afresh: the new level is in the answer
        assert check is not None and check.decision.level is Level.AAL2 and len(decides) == 2
    else:
        assert check is None and guard.check(PAGE, token).session is None


@pytest.mark.parametrize("aal2", ["max_session: 10m, idle: 1h", "max_session: 24h, idle: 10m"])
def test_an_answer_is_not_given_again_once_an_authentication_expires(
        tmp_path: Path, clock: Clock, aal2: str) -> None:
    """A remembered allow lasts no longer than the level it was given at: past the aal2 proof's
    10 minutes of age, or 10 idle minutes (issue 16: the horizon without `idle` kept an aal2
    answer after aal2 went idle)."""
    guard, runtime = guard_with(tmp_path, clock, POLICY.replace(
        "aal2: {acr: \"urn:stepguard:aal2\", max_session: 24h, idle: 1h}",
        f"aal2: {{acr: \"urn:stepguard:aal2\", {aal2}}}"))
    try:
        _, session, token = signed_in(runtime)
        runtime.store.sessions.add_event(session.id, AuthEvent(
            factor="totp", amr=("otp",), level=Level.AAL2, at=clock.now))
        guard.check(PAGE, token)
        check = guard.check_cached(PAGE, token)
        assert check is not None and check.decision.level is Level.AAL2
        clock.advance(601)  # older or idler than aal2's 10 minutes: the session is aal1
        check = guard.check_cached(PAGE, token)
        assert check is not None and check.decision.level is Level.AAL1
    finally:
        runtime.close()


def test_an_answer_is_not_given_again_in_another_utc_hour(tmp_path: Path, clock: Clock) -> None:
    hour = int(clock.now // 3600 % 24)
    guard, runtime = guard_with(tmp_path, clock, POLICY.replace("default:", f"""\
  - name: next-hour
    match: {{paths: ["/orders"]}}
    when: "hour() == {(hour + 1) % 24}"
    deny: "Not in this hour"
default:"""))
    try:
        _, _, token = signed_in(runtime)
        assert guard.check(PAGE, token).decision.allowed
        clock.now = (clock.now // 3600 + 1) * 3600  # the first second of the next hour
        check = guard.check_cached(PAGE, token)
        assert check is not None and check.decision.outcome is Outcome.DENY
    finally:
        runtime.close()


def test_a_policy_that_reads_durations_is_decided_every_time(
        tmp_path: Path, clock: Clock, decides: list[RequestContext]) -> None:
    guard, runtime = guard_with(tmp_path, clock, POLICY.replace("default:", """\
  - name: idle-check
    match: {paths: ["/orders"]}
    when: "session.idle > 600"
    require: {level: aal2}
default:"""))
    try:
        assert not guard.memo_ok
        _, _, token = signed_in(runtime)
        guard.check(PAGE, token)
        for _ in range(3):
            assert guard.check_cached(PAGE, token) is not None
        assert len(decides) == 4
    finally:
        runtime.close()


def test_an_allow_with_a_fading_risk_signal_is_decided_every_time(
        tmp_path: Path, clock: Clock, decides: list[RequestContext]) -> None:
    guard, runtime = guard_with(tmp_path, clock, extra="risk: {weights: {failed_attempts: 10}}\n")
    try:
        user, _, token = signed_in(runtime)
        for _ in range(runtime.risk.failure_burst):
            runtime.store.history.record_failure(user.id, at=runtime.now())
        for _ in range(3):
            check = guard.check(PAGE, token)
            assert check.risk.level == "low" and "failed_attempts" in check.risk.names
            assert guard.check_cached(PAGE, token) is not None
        assert len(decides) == 6  # the failures leave their window as time passes
    finally:
        runtime.close()


class AwaitedReads:
    """`VersionBatches`' contract over the memory store: each awaited read sees the store as of
    the call (what a statement sent after the request asked sees)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store, self.reads, self.down = store, 0, False

    async def read(self, token_hash: str) -> Versions | None:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("down")
        found = self.store.session_states.read(token_hash, known=(0, 0), now=0.0)
        if found is None:
            return None
        return found if isinstance(found, Versions) else found.versions


@pytest.mark.parametrize("how", ["revoke", "disable", "rotate", "step_up", "store_down"])
def test_the_awaited_read_never_allows_past_a_change(runtime: Runtime, how: str) -> None:
    """`check_cached_key_async` (forward-auth on PostgreSQL): a cached copy is used only when
    the awaited read finds its versions unchanged; a revocation, a change, a missing row or an
    unreachable store each send the request to the thread path (None), never allow it."""
    guard = Guard(runtime)
    reads = AwaitedReads(runtime.store)  # type: ignore[arg-type]
    guard._batches = reads  # type: ignore[assignment]  # noqa: SLF001 — the PostgreSQL wiring
    user, session, token = signed_in(runtime)
    key = hash_token(token)
    assert asyncio.run(guard.check_cached_key_async(PAGE, key)) is None  # not cached yet
    assert guard.check(PAGE, token).session is not None  # the thread path loads it
    allowed = asyncio.run(guard.check_cached_key_async(PAGE, key))
    assert allowed is not None and allowed.decision.outcome is Outcome.ALLOW
    assert reads.reads == 1
    now = runtime.now()
    {"revoke": lambda: runtime.store.sessions.revoke(session.id, now=now),
     "disable": lambda: runtime.store.users.set_disabled(user.id, True, now=now),
     "rotate": lambda: runtime.store.sessions.rotate(session.id, "other", now=now),
     "step_up": lambda: runtime.store.sessions.add_event(
         session.id, AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2, at=now)),
     "store_down": lambda: setattr(reads, "down", True)}[how]()
    assert asyncio.run(guard.check_cached_key_async(PAGE, key)) is None
    assert reads.reads == 2


@pytest.mark.parametrize("cached", [False, True])
def test_a_session_lives_exactly_its_idle_and_absolute_lifetime(runtime: Runtime, clock: Clock,
                                                                cached: bool) -> None:
    """Both lifetimes are inclusive (as `max_age` is): a cookie used exactly `idle` after its
    last use, or exactly `max_session` after sign-in, still counts; a second later it does not
    (issue 16: `<=` loosened to `<` or tightened went unnoticed)."""
    guard = Guard(runtime)
    user = build.user("carol", created=clock.now)
    runtime.store.users.add(user)
    day = 86_400.0
    for name, created, last_seen in (("idle", clock.now, clock.now),
                                     ("absolute", clock.now - 30 * day + 3600, clock.now)):
        token = f"token-{name}-" + "y" * 32
        runtime.store.sessions.add(build.session(
            user.id, token_hash=hash_token(token), created=created, last_seen=last_seen,
            ip=PAGE.client_ip, user_agent=PAGE.user_agent,
            events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=created),)))
        if cached:
            assert guard.load(token) is not None
    clock.advance(3600)  # aal1 here: idle 1 h, max_session 30 d
    for name in ("idle", "absolute"):
        assert (Guard(runtime) if not cached else guard).load(
            f"token-{name}-" + "y" * 32) is not None, name
    clock.advance(1)
    assert guard.load("token-absolute-" + "y" * 32) is None


ONCE_POLICY = POLICY.replace("default:", """\
  - name: delete-repo
    match: {methods: [POST], paths: ["/repos/delete"]}
    require: {level: aal2, max_age: 0s, single_use: true, reason: "Delete the repository"}
default:""")
DELETE = RequestContext(method="POST", host="app.test", path="/repos/delete",
                        client_ip="198.51.100.7")  # the action ONCE_POLICY asks a grant for


def test_a_single_use_grant_is_spent_once_through_the_event_loop_path_too(
        tmp_path: Path, clock: Clock) -> None:
    """Exactly once (SECURITY.md): the cached path a door tries first must not allow with a
    single-use grant without spending it (issue 16: `consume_grant or ...` read as `and` let the
    same grant allow every later request)."""
    loaded = load_config(write_config(tmp_path, policy=ONCE_POLICY))
    rt = build_runtime(loaded, clock=clock, store=MemoryStore(), audit_log=MemoryAuditLog())
    try:
        guard = Guard(rt)
        user, session, token = signed_in(rt)
        asked = guard.check(DELETE, token).decision
        assert asked.outcome is Outcome.STEP_UP
        rt.store.grants.add(grant_answering(asked, session.id, user.id, granted_at=clock.now,
                                            expires_at=clock.now + 300))
        assert guard.load(token) is not None  # the copy with the grant is cached
        outcomes = []
        for _ in range(3):
            check = guard.check_cached(DELETE, token) or guard.check(DELETE, token)
            outcomes.append(check.decision.outcome)
        assert outcomes == [Outcome.ALLOW, Outcome.STEP_UP, Outcome.STEP_UP]
    finally:
        rt.close()




def test_a_full_cache_evicts_the_least_recently_used_session_which_then_reloads(
        runtime: Runtime, store: CountingStore) -> None:
    guard = Guard(runtime)
    guard.cache.size = 2
    tokens = [signed_in(runtime, name)[2] for name in ("alice", "bob", "carol")]
    for token in tokens:
        assert guard.check(PAGE, token).session is not None
    assert len(guard.cache._items) == 2  # noqa: SLF001 - the bound is what is tested
    loads = store.loads
    assert guard.check(PAGE, tokens[0]).session is not None  # evicted: loaded again, still valid
    assert store.loads == loads + 1
    assert guard.cache.hit_rate == guard.cache.hits / (guard.cache.hits + guard.cache.misses)


def test_an_oversized_cookie_is_no_session_on_either_path(runtime: Runtime) -> None:
    guard = Guard(runtime)
    huge = "x" * (MAX_TOKEN + 1)
    assert guard.check_cached(PAGE, huge) is None  # not answered on the event loop
    check = guard.check(PAGE, huge)
    assert check.session is None and check.decision.outcome is Outcome.STEP_UP


def test_a_busy_audit_queue_sends_decisions_to_the_thread_path(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the backlog limit a decision is not made on the event loop, where writing its
    audit entry could block every other request."""
    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    assert guard.check(PAGE, token).session is not None
    assert guard.check_cached(PAGE, token) is not None  # warm: answered inline
    monkeypatch.setattr(type(runtime.audit), "backlog", property(lambda _: 10_000))
    assert guard.check_cached(PAGE, token) is None
    assert guard.check(PAGE, token).decision.outcome is Outcome.ALLOW  # and decided there


def test_the_answers_kept_per_session_copy_are_bounded(runtime: Runtime,
                                                       decides: list[RequestContext]) -> None:
    """Each request's reading is a new context object: a client sending many distinct
    requests cannot grow one session's remembered answers without bound."""
    from stepguard.service.guard import ANSWERS_PER_COPY
    from stepguard.service.runtime import token_key

    guard = Guard(runtime)
    _, _, token = signed_in(runtime)
    assert guard.check(PAGE, token).decision.allowed
    contexts = [RequestContext(method="GET", host="app.test", path=f"/orders/{i}",
                               client_ip="198.51.100.7") for i in range(ANSWERS_PER_COPY + 5)]
    for context in contexts:
        assert guard.check_cached(context, token) is not None
    loaded = guard.cache.get(token_key(token))  # type: ignore[arg-type]
    assert loaded is not None and 0 < len(loaded.answers) <= ANSWERS_PER_COPY
    decided = len(decides)
    assert guard.check_cached(contexts[-1], token) is not None  # kept: given again
    assert len(decides) == decided


def test_an_eviction_racing_a_cache_lookup_still_returns_the_copy_found(runtime: Runtime) -> None:
    """`get` reads without the lock; another thread may evict the key before the LRU touch."""

    class Racing(OrderedDict[str, Loaded]):
        def move_to_end(self, key: str, last: bool = True) -> None:
            self.pop(key)  # evicted by another thread in between
            super().move_to_end(key, last)

    cache = SessionCache(size=4)
    _, session, _ = signed_in(runtime)
    snapshot = runtime.store.session_states.read(session.token_hash, now=runtime.now())
    assert isinstance(snapshot, SessionSnapshot)
    copy = Loaded.of(snapshot, None)
    cache._items = Racing({"k": copy})
    assert cache.get("k") is copy and cache.get("k") is None


def test_a_check_carries_the_versions_it_was_decided_under(runtime: Runtime) -> None:
    """The database door remembers a plain allow with these, not with a read taken after the
    decision: a change committed in between (new groups) must not inherit the old allow."""
    guard = Guard(runtime)
    user, _, token = signed_in(runtime)
    check = guard.check(PAGE, token)
    assert check.versions is not None and check.versions == versions_now(
        guard, hash_token(token), PAGE)
    runtime.store.users.set_groups(user.id, ("admins",))
    assert versions_now(guard, hash_token(token), PAGE) not in (None, check.versions)
    assert guard.check(PAGE, None).versions is None  # no session: nothing to compare

