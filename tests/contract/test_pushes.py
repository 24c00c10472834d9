"""Contract: push requests (one compare-and-set answer) and push devices (factors of kind push)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import delete

from stepguard.core.errors import Conflict
from stepguard.storage import tables as t
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW


@pytest.fixture
def user_id(store: SqlStore) -> str:
    alice = build.user()
    store.users.add(alice)
    return alice.id


def test_add_then_get_every_field(store: SqlStore, user_id: str) -> None:
    push = build.push(user_id, status="denied", answered_at=NOW + 3, device_id="d1")
    store.pushes.add(push)
    assert store.pushes.get(push.id) == push
    assert store.pushes.get("missing") is None
    with pytest.raises(Conflict):
        store.pushes.add(push)


def test_latest_for_challenge(store: SqlStore, user_id: str) -> None:
    old = build.push(user_id, challenge_id="c1")
    new = build.push(user_id, challenge_id="c1", created=NOW + 40, expires=NOW + 160)
    store.pushes.add(new)
    store.pushes.add(old)
    store.pushes.add(build.push(user_id, challenge_id="c2", created=NOW + 50))
    assert store.pushes.latest_for_challenge("c1") == new
    assert store.pushes.latest_for_challenge("none") is None


def test_pending_for_user_and_starts(store: SqlStore, user_id: str) -> None:
    bob = build.user("bob")
    store.users.add(bob)
    live = build.push(user_id, created=NOW + 10, expires=NOW + 130)
    answered = build.push(user_id, created=NOW + 5, status="approved")
    expired = build.push(user_id, created=NOW - 200, expires=NOW - 80)
    others = build.push(bob.id)
    for push in (live, answered, expired, others):
        store.pushes.add(push)
    assert store.pushes.pending_for_user(user_id, now=NOW + 20) == (live,)
    assert store.pushes.pending_for_user(user_id, now=NOW + 130) == ()
    assert store.pushes.count_pending(user_id, now=NOW + 20) == 1
    assert store.pushes.starts_for_user(user_id, since=NOW - 3600) == (NOW - 200, NOW + 5,
                                                                      NOW + 10)
    assert store.pushes.starts_for_user(user_id, since=NOW) == (NOW + 5, NOW + 10)


def test_answer_once_and_never_after_expiry(store: SqlStore, user_id: str) -> None:
    push = build.push(user_id)
    store.pushes.add(push)
    assert store.pushes.answer(push.id, status="approved", device_id="d1", now=NOW + 3)
    assert not store.pushes.answer(push.id, status="denied", device_id="d2", now=NOW + 4)
    assert store.pushes.get(push.id) == replace(
        push, status="approved", device_id="d1", answered_at=NOW + 3
    )
    late = build.push(user_id)
    store.pushes.add(late)
    assert not store.pushes.answer(late.id, status="approved", device_id="d1", now=NOW + 120)
    assert not store.pushes.answer("missing", status="approved", device_id="d1", now=NOW)
    with pytest.raises(ValueError):
        store.pushes.answer(late.id, status="pending", device_id="d1", now=NOW)


def test_answer_exactly_one_of_fifty_racers(store: SqlStore, user_id: str) -> None:
    push = build.push(user_id)
    store.pushes.add(push)
    results = build.race(
        50,
        lambda i: store.pushes.answer(
            push.id, status="approved" if i % 2 else "denied", device_id=f"d{i}", now=NOW + 1
        ),
    )
    assert results.count(True) == 1


def test_purge_removes_long_expired(store: SqlStore, user_id: str) -> None:
    old = build.push(user_id, expires=NOW - 10)
    kept = build.push(user_id)
    store.pushes.add(old)
    store.pushes.add(kept)
    assert store.pushes.purge(expired_before=NOW) == 1
    assert store.pushes.get(old.id) is None and store.pushes.get(kept.id) == kept


def test_pushes_go_with_their_user(sql_store: SqlStore) -> None:
    """The SQL schema's cascade (the memory store has no user deletion)."""
    user = build.user()
    sql_store.users.add(user)
    push = build.push(user.id)
    sql_store.pushes.add(push)
    with sql_store.engine.begin() as connection:
        connection.execute(delete(t.users).where(t.users.c.id == user.id))
    assert sql_store.pushes.get(push.id) is None


def test_push_devices_are_factors_with_a_public_key(store: SqlStore, user_id: str) -> None:
    device = build.factor(
        user_id, "push", label="Firefox on Android", public_key=b"\x30\x59spki",
        data={"alg": "ES256", "user_agent": "Mozilla/5.0 (Android) Firefox/128.0"},
    )
    store.factors.add(device)
    store.factors.add(build.factor(user_id, "push", public_key=b"\x30\x59other", created=NOW + 1))
    assert store.factors.get(device.id) == device
    assert store.factors.for_user(user_id, kind="push")[0].data["alg"] == "ES256"
    assert store.factors.mark_used(device.id, now=NOW + 9)
    assert store.factors.get(device.id).last_used == NOW + 9  # type: ignore[union-attr]
    assert not store.factors.remove(device.id, user_id="someone-else")
    assert store.factors.remove(device.id, user_id=user_id)
    assert store.factors.get(device.id) is None
