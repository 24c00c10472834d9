"""Contract: AgentTokens. Every backend keeps only the secret's hash, revokes a token exactly once
(also under concurrency), revokes all of a user's live tokens and no one else's, and — where a
version board exists — raises the mark a cached copy of the agent depends on.

Each test works on users of its own (PostgreSQL's contract database is shared by the session).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from stepguard.core.errors import Conflict
from stepguard.storage.agent_tokens import AgentTokenRecord, session_of
from stepguard.storage.interfaces import Store
from tests.contract.build import NOW, new_id


def token(user_id: str, **fields: Any) -> AgentTokenRecord:
    values: dict[str, Any] = {"id": new_id()[:16], "user_id": user_id, "name": "agent",
                              "secret_hash": "ab" * 32, "created": NOW, "expires": NOW + 3600}
    values.update(fields)
    return AgentTokenRecord(**values)


def test_add_then_get_and_a_duplicate_id_conflicts(store: Store) -> None:
    record = token(new_id())
    store.agent_tokens.add(record)
    assert store.agent_tokens.get(record.id) == record
    assert store.agent_tokens.get("0" * 16) is None
    with pytest.raises(Conflict):
        store.agent_tokens.add(replace(record, name="another"))


def test_for_user_lists_only_that_users_tokens_oldest_first(store: Store) -> None:
    alice, bob = new_id(), new_id()
    later = token(alice, created=NOW + 10)
    first = token(alice)
    store.agent_tokens.add(later)
    store.agent_tokens.add(first)
    store.agent_tokens.add(token(bob))
    assert store.agent_tokens.for_user(alice) == (first, later)
    assert store.agent_tokens.for_user(new_id()) == ()


def test_revoke_once_and_only_by_its_owner(store: Store) -> None:
    alice = new_id()
    record = token(alice)
    store.agent_tokens.add(record)
    assert not store.agent_tokens.revoke(record.id, user_id=new_id(), now=NOW + 1)
    assert not store.agent_tokens.revoke("0" * 16, user_id=None, now=NOW + 1)
    assert store.agent_tokens.revoke(record.id, user_id=alice, now=NOW + 1)
    assert not store.agent_tokens.revoke(record.id, user_id=None, now=NOW + 2)
    found = store.agent_tokens.get(record.id)
    assert found is not None and found.revoked_at == NOW + 1 and not found.live(NOW + 1)


def test_concurrent_revokes_succeed_exactly_once(store: Store) -> None:
    record = token(new_id())
    store.agent_tokens.add(record)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def revoke() -> None:
        barrier.wait()
        results.append(store.agent_tokens.revoke(record.id, user_id=None, now=NOW + 1))

    threads = [threading.Thread(target=revoke) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1


def test_revoke_all_for_user_counts_live_tokens_and_spares_others(store: Store) -> None:
    alice, bob = new_id(), new_id()
    live = [token(alice), token(alice)]
    gone = token(alice)
    bobs = token(bob)
    for record in (*live, gone, bobs):
        store.agent_tokens.add(record)
    assert store.agent_tokens.revoke(gone.id, user_id=alice, now=NOW + 1)
    assert store.agent_tokens.revoke_all_for_user(alice, now=NOW + 2) == 2
    assert store.agent_tokens.revoke_all_for_user(alice, now=NOW + 3) == 0
    assert all(not r.live(NOW + 2) for r in store.agent_tokens.for_user(alice))
    kept = store.agent_tokens.get(gone.id)
    assert kept is not None and kept.revoked_at == NOW + 1  # the first revocation stands
    still = store.agent_tokens.get(bobs.id)
    assert still is not None and still.live(NOW + 2)


def test_expiry_is_on_the_given_clock(store: Store) -> None:
    record = token(new_id(), expires=NOW + 60)
    store.agent_tokens.add(record)
    found = store.agent_tokens.get(record.id)
    assert found is not None and found.live(NOW + 59.999) and not found.live(NOW + 60)


def test_touch_records_the_last_use(store: Store) -> None:
    record = token(new_id())
    store.agent_tokens.add(record)
    assert store.agent_tokens.touch(record.id, now=NOW + 5)
    assert not store.agent_tokens.touch("0" * 16, now=NOW + 5)
    found = store.agent_tokens.get(record.id)
    assert found is not None and found.last_used == NOW + 5


def test_revocations_raise_the_version_board(store: Store) -> None:
    board = store.version_board
    if board is None:
        pytest.skip("this backend has no version board: every request reads")
    alice = new_id()
    one, other = token(alice), token(alice)
    store.agent_tokens.add(one)
    store.agent_tokens.add(other)
    before = board.mark(session_of(one.id), alice)
    store.agent_tokens.touch(one.id, now=NOW + 1)  # not decision-relevant: no change
    assert board.mark(session_of(one.id), alice) == before
    assert store.agent_tokens.revoke(one.id, user_id=alice, now=NOW + 2)
    after_one = board.mark(session_of(one.id), alice)
    assert after_one is not None and after_one != before
    before_all = board.mark(session_of(other.id), alice)
    assert store.agent_tokens.revoke_all_for_user(alice, now=NOW + 3) == 1
    assert board.mark(session_of(other.id), alice) != before_all
