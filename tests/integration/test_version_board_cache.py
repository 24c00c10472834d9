"""Guard on a SQLite store with its version board: a confirmed cached session is decided without
reading the store, and still every change made by another process (another worker, the CLI) is
honoured by the very next request (SECURITY.md case 12); a write in flight, a quiet store and a
copy that looks expired all fall back to the per-request read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.errors import StoreUnavailable
from stepguard.core.levels import Level
from stepguard.service.guard import STORE_CONTACT_EVERY, Guard
from stepguard.service.runtime import Runtime, hash_token
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.support.gateway import Clock, make_runtime

POLICY = """\
levels:
  aal1: {max_session: 30d, idle: 1h}
default: {level: aal1}
"""
PAGE = RequestContext(method="GET", host="app.test", path="/orders", client_ip="198.51.100.7")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runtime(tmp_path: Path, clock: Clock) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, clock=clock, policy=POLICY)
    yield rt
    rt.close()


@pytest.fixture
def other_process(tmp_path: Path) -> Iterator[SqlStore]:
    """The same database opened by a second store object: what another worker or the CLI has."""
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'stepguard.db'}")
    yield store
    store.close()


@pytest.fixture
def reads(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    read = runtime.store.session_states.read

    def counted(token_hash: str, **kwargs: object) -> object:
        seen.append(token_hash)
        return read(token_hash, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime.store.session_states, "read", counted)
    return seen


def signed_in(runtime: Runtime) -> tuple[UserRecord, SessionRecord, str]:
    user = build.user("alice", created=runtime.now())
    runtime.store.users.add(user)
    token = "token-of-alice-" + "x" * 32
    now = runtime.now()
    session = build.session(user.id, token_hash=hash_token(token), created=now, last_seen=now,
                            ip=PAGE.client_ip, user_agent=PAGE.user_agent,
                            events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1,
                                              at=now),))
    runtime.store.sessions.add(session)
    return user, session, token


def confirmed(runtime: Runtime) -> tuple[Guard, UserRecord, SessionRecord, str]:
    """A guard whose cache holds the session with a recorded mark (a load, then one read)."""
    guard = Guard(runtime)
    user, session, token = signed_in(runtime)
    for _ in range(2):
        assert guard.check(PAGE, token).session is not None
    return guard, user, session, token


def test_a_confirmed_session_is_decided_without_reading_the_store(
        runtime: Runtime, reads: list[str]) -> None:
    guard, _, _, token = confirmed(runtime)
    before = len(reads)
    for _ in range(20):
        assert guard.check(PAGE, token).session is not None
        assert guard.check_cached(PAGE, token) is not None
    assert len(reads) == before


CHANGES: dict[str, Callable[[SqlStore, UserRecord, SessionRecord, float], object]] = {
    "revoke": lambda s, u, r, now: s.sessions.revoke(r.id, now=now),
    "revoke_all": lambda s, u, r, now: s.sessions.revoke_all_for_user(u.id, now=now),
    "disable": lambda s, u, r, now: s.users.set_disabled(u.id, True, now=now),
    "rotate": lambda s, u, r, now: s.sessions.rotate(r.id, "f" * 64, now=now),
}


@pytest.mark.parametrize("how", sorted(CHANGES))
def test_another_process_s_revocation_is_honoured_by_the_very_next_request(
        runtime: Runtime, other_process: SqlStore, how: str) -> None:
    guard, user, session, token = confirmed(runtime)
    CHANGES[how](other_process, user, session, runtime.now())
    assert guard.check(PAGE, token).session is None
    assert guard.check_cached(PAGE, token) is None


def test_another_process_s_step_up_is_seen_by_the_next_request(
        runtime: Runtime, other_process: SqlStore) -> None:
    guard, _, session, token = confirmed(runtime)
    other_process.sessions.add_event(session.id, AuthEvent(
        factor="totp", amr=("otp",), level=Level.AAL2, at=runtime.now()))
    found = guard.check(PAGE, token).session
    assert found is not None and found.events[-1].level is Level.AAL2


def test_a_write_in_flight_sends_every_request_to_the_store(
        runtime: Runtime, other_process: SqlStore, reads: list[str]) -> None:
    guard, _, session, token = confirmed(runtime)
    board = other_process.version_board
    assert board is not None
    writing = board.writing([session.id])
    writing.__enter__()  # begun, not ended: a writer between its two steps (or one that died)
    before = len(reads)
    for _ in range(3):
        guard.check(PAGE, token)
    assert len(reads) == before + 3
    writing.__exit__(None, None, None)


def test_a_quiet_store_is_read_again_and_a_dead_one_fails_closed(
        runtime: Runtime, clock: Clock, reads: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    guard, _, _, token = confirmed(runtime)
    before = len(reads)
    clock.advance(STORE_CONTACT_EVERY)
    guard.check(PAGE, token)
    assert len(reads) == before + 1  # no read for a second: this one goes to the store
    clock.advance(STORE_CONTACT_EVERY)

    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(runtime.store.session_states, "read", down)
    with pytest.raises(StoreUnavailable):
        guard.check(PAGE, token)
    assert guard.check_cached(PAGE, token) is None


def test_a_copy_that_looks_expired_asks_the_store_which_another_worker_updated(
        runtime: Runtime, clock: Clock, other_process: SqlStore) -> None:
    guard, _, session, token = confirmed(runtime)
    idle = runtime.policy.levels[Level.AAL1].idle
    clock.advance(idle - 1)
    other_process.sessions.touch_many([(session.id, runtime.now(), "198.51.100.7", "")])
    clock.advance(2)  # past idle for this worker's copy, not for the store
    assert guard.check(PAGE, token).session is not None
