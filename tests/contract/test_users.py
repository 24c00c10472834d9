"""Contract: Users."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Conflict
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW


def test_add_then_get_returns_the_same_record(store: SqlStore) -> None:
    alice = build.user(
        "Alice",
        display_name="Alice Liddell",
        email="alice@example.com",
        groups=frozenset({"admins", "staff"}),
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
    )
    store.users.add(alice)
    assert store.users.get(alice.id) == alice
    assert store.users.get("nobody") is None


def test_by_username_ignores_case_and_surrounding_space(store: SqlStore) -> None:
    alice = build.user("Alice")
    store.users.add(alice)
    assert store.users.by_username("alice") == alice
    assert store.users.by_username(" ALICE ") == alice
    assert store.users.by_username("alicia") is None


def test_duplicate_username_or_id_conflicts(store: SqlStore) -> None:
    alice = build.user("alice")
    store.users.add(alice)
    with pytest.raises(Conflict):
        store.users.add(build.user("ALICE"))
    with pytest.raises(Conflict):
        store.users.add(build.user("bob", id=alice.id))


def test_import_many_is_all_or_nothing(store: SqlStore) -> None:
    assert store.users.import_many([build.user("a"), build.user("b"), build.user("c")]) == 3
    with pytest.raises(Conflict):
        store.users.import_many([build.user("d"), build.user("a")])
    assert store.users.by_username("d") is None
    assert store.users.import_many([]) == 0


def test_list_pages_in_username_order(store: SqlStore) -> None:
    store.users.import_many([build.user(name) for name in ("carol", "Alice", "bob")])
    assert [u.username for u in store.users.list()] == ["Alice", "bob", "carol"]
    assert [u.username for u in store.users.list(offset=1, limit=1)] == ["bob"]


def test_set_groups_and_password_hash(store: SqlStore) -> None:
    alice = build.user()
    store.users.add(alice)
    assert store.users.set_groups(alice.id, ["ops", "admins", "ops"])
    assert store.users.set_password_hash(alice.id, "$argon2id$new")
    stored = store.users.get(alice.id)
    assert stored is not None
    assert stored.groups == frozenset({"ops", "admins"})
    assert stored.password_hash == "$argon2id$new"
    assert not store.users.set_groups("nobody", ["x"])
    assert not store.users.set_password_hash("nobody", "x")


def test_disabling_revokes_every_session_and_enabling_revokes_nothing(store: SqlStore) -> None:
    alice, bob = build.user("alice"), build.user("bob")
    store.users.import_many([alice, bob])
    sessions = [build.session(alice.id) for _ in range(3)]
    bobs = build.session(bob.id)
    for session in [*sessions, bobs]:
        store.sessions.add(session)

    assert store.users.set_disabled(alice.id, True, now=NOW + 5)

    stored = store.users.get(alice.id)
    assert stored is not None and stored.disabled
    assert store.sessions.list_for_user(alice.id) == ()
    assert all(store.sessions.by_token_hash(s.token_hash) is None for s in sessions)
    assert store.sessions.get(bobs.id) is not None
    fresh = build.session(alice.id)
    store.sessions.add(fresh)
    assert store.users.set_disabled(alice.id, False, now=NOW + 6)
    assert store.sessions.get(fresh.id) is not None
    assert not store.users.set_disabled("nobody", True, now=NOW)


def test_subject_view(store: SqlStore) -> None:
    alice = build.user("alice", display_name="Alice L", email="a@example.com")
    subject = alice.subject()
    assert (subject.id, subject.name, subject.email) == (alice.id, "Alice L", "a@example.com")
    assert build.user("bob").subject().name == "bob"
