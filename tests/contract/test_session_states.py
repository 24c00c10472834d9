"""Contract: SessionStates - the one statement per decision, and the per-session and per-user
cache versions it reads. A change to one session or user moves only its own versions; every
change a decision depends on moves one of them (SECURITY.md case 12 without a global flush)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from stepguard.core.errors import StoreUnavailable
from stepguard.core.levels import Level
from stepguard.storage.interfaces import Store
from stepguard.storage.records import SessionRecord, SessionSnapshot, UserRecord, Versions
from stepguard.storage.session_states import UNKNOWN
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW


@pytest.fixture
def alice(store: Store) -> UserRecord:
    user = build.user("alice", groups=frozenset({"staff"}), email="a@example.com")
    store.users.add(user)
    return user


@pytest.fixture
def bob(store: Store) -> UserRecord:
    user = build.user("bob")
    store.users.add(user)
    return user


def snapshot(store: Store, session: SessionRecord, now: float = NOW) -> SessionSnapshot:
    found = store.session_states.read(session.token_hash, now=now)
    assert isinstance(found, SessionSnapshot)
    return found


def versions(store: Store, session: SessionRecord) -> tuple[int, int]:
    return snapshot(store, session).versions.pair


def test_an_unknown_token_reads_none(store: Store) -> None:
    assert store.session_states.read("nope", now=NOW) is None


def test_the_snapshot_holds_session_user_grants_and_history_exactly(
        store: Store, alice: UserRecord) -> None:
    session = build.session(alice.id, created=NOW + 0.123456, last_seen=NOW + 1.654321,
                            events=(build.event(at=NOW + 0.000001),
                                    build.event("totp", Level.AAL2, NOW + 2.5)))
    store.sessions.add(session)
    active = build.grant(session.id, subject_id=alice.id, granted_at=NOW + 0.1,
                         expires_at=NOW + 300.000001)
    expired = build.grant(session.id, subject_id=alice.id, expires_at=NOW - 1)
    spent = build.grant(session.id, subject_id=alice.id)
    for grant in (active, expired, spent):
        store.grants.add(grant)
    assert store.grants.consume(spent.id, session_id=session.id, now=NOW)
    store.history.record_success(alice.id, device_id="d1", network_prefix="192.0.2.0/24",
                                 country="FR", location=None, at=NOW, hour=3)
    found = snapshot(store, session)
    assert found.record == session
    assert found.user == store.users.get(alice.id)
    assert found.grants == (active,)
    assert found.history == store.history.load(alice.id)
    assert found.versions.last_seen == session.last_seen


def test_unchanged_versions_read_only_the_versions(store: Store, alice: UserRecord) -> None:
    session = build.session(alice.id)
    store.sessions.add(session)
    known = snapshot(store, session).versions
    found = store.session_states.read(session.token_hash, known=known.pair, now=NOW)
    assert found == known and isinstance(found, Versions)


def test_revoked_or_rotated_sessions_read_none(store: Store, alice: UserRecord) -> None:
    one, two = build.session(alice.id), build.session(alice.id)
    store.sessions.add(one)
    store.sessions.add(two)
    store.sessions.revoke(one.id, now=NOW)
    store.sessions.rotate(two.id, "new-hash", now=NOW)
    assert store.session_states.read(one.token_hash, now=NOW) is None
    assert store.session_states.read(two.token_hash, now=NOW) is None
    assert store.session_states.read("new-hash", now=NOW) is not None


SESSION_CHANGES: dict[str, Callable[[Store, SessionRecord], object]] = {
    "event added": lambda s, r: s.sessions.add_event(r.id, build.event("totp", Level.AAL2)),
    "grant added": lambda s, r: s.grants.add(build.grant(r.id)),
}


@pytest.mark.parametrize("change", SESSION_CHANGES)
def test_a_session_change_moves_only_that_sessions_version(
        store: Store, alice: UserRecord, change: str) -> None:
    mine, other = build.session(alice.id), build.session(alice.id)
    store.sessions.add(mine)
    store.sessions.add(other)
    before_mine, before_other = versions(store, mine), versions(store, other)
    SESSION_CHANGES[change](store, mine)
    assert versions(store, mine)[0] > before_mine[0]
    assert versions(store, mine)[1] == before_mine[1]
    assert versions(store, other) == before_other


def test_spending_a_grant_moves_the_sessions_version(store: Store, alice: UserRecord) -> None:
    session = build.session(alice.id)
    store.sessions.add(session)
    grant = build.grant(session.id)
    store.grants.add(grant)
    before = versions(store, session)
    assert store.grants.consume(grant.id, session_id=session.id, now=NOW)
    assert versions(store, session)[0] > before[0]


USER_CHANGES: dict[str, Callable[[Store, UserRecord], object]] = {
    "groups": lambda s, u: s.users.set_groups(u.id, ["other"]),
    "risk history": lambda s, u: s.history.record_failure(u.id, at=NOW),
}


@pytest.mark.parametrize("change", USER_CHANGES)
def test_a_user_change_moves_only_that_users_version(
        store: Store, alice: UserRecord, bob: UserRecord, change: str) -> None:
    mine, theirs = build.session(alice.id), build.session(bob.id)
    store.sessions.add(mine)
    store.sessions.add(theirs)
    before_mine, before_theirs = versions(store, mine), versions(store, theirs)
    USER_CHANGES[change](store, alice)
    assert versions(store, mine)[1] > before_mine[1]
    assert versions(store, theirs) == before_theirs


def test_disabling_or_revoking_every_session_ends_them(store: Store, alice: UserRecord,
                                                       bob: UserRecord) -> None:
    one, two, theirs = (build.session(alice.id), build.session(alice.id),
                        build.session(bob.id))
    for session in (one, two, theirs):
        store.sessions.add(session)
    store.sessions.revoke_all_for_user(alice.id, now=NOW)
    assert store.session_states.read(one.token_hash, now=NOW) is None
    assert store.session_states.read(two.token_hash, now=NOW) is None
    assert store.session_states.read(theirs.token_hash, now=NOW) is not None
    three = build.session(alice.id)
    store.sessions.add(three)
    store.users.set_disabled(alice.id, True, now=NOW)
    assert store.session_states.read(three.token_hash, now=NOW) is None


def test_last_seen_writes_move_no_version_and_never_go_back(store: Store,
                                                            alice: UserRecord) -> None:
    session = build.session(alice.id)
    store.sessions.add(session)
    before = versions(store, session)
    store.sessions.touch_many([(session.id, NOW + 40, "198.51.100.1", "Safari")])
    store.sessions.touch_many([(session.id, NOW + 20, "198.51.100.2", "Old")])
    found = snapshot(store, session)
    assert found.versions.pair == before
    assert (found.record.last_seen, found.record.ip, found.record.user_agent) == (
        NOW + 40, "198.51.100.1", "Safari")


REVOCATIONS: dict[str, Callable[[Store, SessionRecord], object]] = {
    "sign out": lambda s, r: s.sessions.revoke(r.id, now=NOW),
    "rotation": lambda s, r: s.sessions.rotate(r.id, "rotated-" + r.token_hash[:20], now=NOW),
    "every session of the user": lambda s, r: s.sessions.revoke_all_for_user(r.user_id, now=NOW),
    "user disabled": lambda s, r: s.users.set_disabled(r.user_id, True, now=NOW),
    "groups changed": lambda s, r: s.users.set_groups(r.user_id, ["other"]),
}


@pytest.mark.parametrize("change", REVOCATIONS)
def test_a_held_connection_sees_another_instances_change_on_its_very_next_read(
        sql_store: SqlStore, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SECURITY.md case 12 on the hot path's own read: this store's held connection (its
    prepared statement run many times, as a busy instance runs it) reads a change committed by
    another instance's store on its very next call, every round — no result, plan or snapshot
    outlives the statement. On PostgreSQL the read must not go through a psycopg cursor (the
    lean libpq path is the one under test)."""
    postgres = sql_store.engine.dialect.name == "postgresql"

    def read(session: SessionRecord, known: tuple[int, int]) -> object:
        with monkeypatch.context() as patch:
            if postgres:
                patch.setattr(psycopg.Cursor, "execute", _no_cursor)
            return sql_store.session_states.read(session.token_hash, known=known, now=NOW)

    other = SqlStore.from_url(str(sql_store.engine.url.render_as_string(hide_password=False)))
    try:
        for round_number in range(3):
            user = build.user(f"u{round_number}")
            other.users.add(user)
            session = build.session(user.id)
            other.sessions.add(session)
            loaded = read(session, UNKNOWN)
            assert isinstance(loaded, SessionSnapshot)
            known = loaded.versions.pair
            for _ in range(20):  # a busy instance: the same statement, again and again
                found = read(session, known)
                assert isinstance(found, Versions) and found.pair == known
            REVOCATIONS[change](other, session)  # committed by another instance
            found = read(session, known)
            if change == "groups changed":
                assert isinstance(found, SessionSnapshot) and found.versions.pair != known
                assert found.user.groups == frozenset({"other"})
            else:
                assert found is None or (isinstance(found, SessionSnapshot)
                                         and found.user.disabled), found
    finally:
        other.close()


def _no_cursor(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the hot-path read went through a psycopg cursor")


def test_a_broken_held_connection_fails_closed_then_reconnects(
        sql_store: SqlStore, alice_sql: UserRecord) -> None:
    """A dead held connection is never an answer: the read raises `StoreUnavailable` (the
    caller denies or challenges), and the next read opens a fresh connection."""
    session = build.session(alice_sql.id)
    sql_store.sessions.add(session)
    states = sql_store.session_states
    known = versions(sql_store, session)
    held = states._local.connection  # type: ignore[attr-defined]
    held.connection.close()  # the server went away under it
    with pytest.raises(StoreUnavailable):
        states.read(session.token_hash, known=known, now=NOW)
    with pytest.raises(StoreUnavailable):  # an event loop does not wait on a store just failed
        states.read(session.token_hash, known=known, now=NOW, connect=False)
    assert states.read(session.token_hash, known=known, now=NOW) == Versions(
        session=known[0], user=known[1], last_seen=session.last_seen)


@pytest.fixture
def alice_sql(sql_store: SqlStore) -> UserRecord:
    user = build.user("alice")
    sql_store.users.add(user)
    return user
