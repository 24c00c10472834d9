"""Contract: Sessions. A revoked session is never handed out again."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Conflict
from stepguard.core.levels import Level
from stepguard.storage.records import SESSION_EVENT_LIMIT
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW


@pytest.fixture
def user_id(store: SqlStore) -> str:
    alice = build.user()
    store.users.add(alice)
    return alice.id


def test_add_then_lookup_by_id_and_token_hash(store: SqlStore, user_id: str) -> None:
    session = build.session(
        user_id, events=(build.event(), build.event("totp", Level.AAL2, NOW + 1))
    )
    store.sessions.add(session)
    assert store.sessions.get(session.id) == session
    assert store.sessions.by_token_hash(session.token_hash) == session
    assert store.sessions.by_token_hash("unknown") is None
    assert store.sessions.get("unknown") is None


def test_duplicate_token_hash_conflicts(store: SqlStore, user_id: str) -> None:
    session = build.session(user_id)
    store.sessions.add(session)
    with pytest.raises(Conflict):
        store.sessions.add(build.session(user_id, token_hash=session.token_hash))


def test_revoked_session_is_never_returned(store: SqlStore, user_id: str) -> None:
    session = build.session(user_id)
    store.sessions.add(session)
    assert store.sessions.revoke(session.id, now=NOW + 1)
    assert store.sessions.get(session.id) is None
    assert store.sessions.by_token_hash(session.token_hash) is None
    assert store.sessions.list_for_user(user_id) == ()
    assert not store.sessions.revoke(session.id, now=NOW + 2)
    assert not store.sessions.touch(session.id, now=NOW + 3, ip="192.0.2.8", user_agent="x")
    assert not store.sessions.rotate(session.id, "new-hash", now=NOW + 3)
    assert not store.sessions.add_event(session.id, build.event())
    assert store.sessions.by_token_hash("new-hash") is None


def test_rotate_invalidates_the_old_token(store: SqlStore, user_id: str) -> None:
    session = build.session(user_id)
    store.sessions.add(session)
    assert store.sessions.rotate(session.id, "rotated-hash", now=NOW + 10)
    assert store.sessions.by_token_hash(session.token_hash) is None
    rotated = store.sessions.by_token_hash("rotated-hash")
    assert rotated is not None
    assert (rotated.id, rotated.last_seen) == (session.id, NOW + 10)


def test_touch_records_last_seen_ip_and_agent(store: SqlStore, user_id: str) -> None:
    session = build.session(user_id)
    store.sessions.add(session)
    assert store.sessions.touch(session.id, now=NOW + 60, ip="198.51.100.1", user_agent="Curl")
    touched = store.sessions.get(session.id)
    assert touched is not None
    assert (touched.last_seen, touched.ip, touched.user_agent) == (NOW + 60, "198.51.100.1", "Curl")
    assert touched.created == NOW


def test_add_event_appends_in_order_and_keeps_the_newest(store: SqlStore, user_id: str) -> None:
    session = build.session(user_id, events=())
    store.sessions.add(session)
    events = [build.event("totp", Level.AAL2, NOW + i) for i in range(SESSION_EVENT_LIMIT + 3)]
    for event in events:
        assert store.sessions.add_event(session.id, event)
    stored = store.sessions.get(session.id)
    assert stored is not None
    assert stored.events == tuple(events[-SESSION_EVENT_LIMIT:])
    assert not store.sessions.add_event("unknown", events[0])


def test_list_for_user_newest_first_with_events(store: SqlStore, user_id: str) -> None:
    older = build.session(user_id, last_seen=NOW)
    newer = build.session(user_id, last_seen=NOW + 5, events=(build.event("webauthn"),))
    other = build.user("bob")
    store.users.add(other)
    for session in (older, newer, build.session(other.id)):
        store.sessions.add(session)
    assert store.sessions.list_for_user(user_id) == (newer, older)


def test_revoke_all_for_user_except_current(store: SqlStore, user_id: str) -> None:
    current, *others = [build.session(user_id) for _ in range(4)]
    for session in (current, *others):
        store.sessions.add(session)
    assert store.sessions.revoke_all_for_user(user_id, now=NOW, except_session=current.id) == 3
    assert [s.id for s in store.sessions.list_for_user(user_id)] == [current.id]
    assert store.sessions.revoke_all_for_user(user_id, now=NOW) == 1
    assert store.sessions.revoke_all_for_user(user_id, now=NOW) == 0


def test_state_view_for_the_core(store: SqlStore, user_id: str) -> None:
    session = build.session(user_id, events=(build.event(), build.event("totp", Level.AAL2)))
    user = store.users.get(user_id)
    assert user is not None
    state = session.state(user.subject())
    assert state.subject.id == user_id
    assert state.amr() == ("pwd", "otp")
