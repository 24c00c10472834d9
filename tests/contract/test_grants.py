"""Contract: Grants. A single-use grant is consumed exactly once; an expired one never."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Conflict
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW


def test_add_then_get(store: SqlStore) -> None:
    grant = build.grant()
    store.grants.add(grant)
    record = store.grants.get(grant.id)
    assert record is not None
    assert (record.grant, record.consumed_at) == (grant, None)
    assert store.grants.get("unknown") is None
    with pytest.raises(Conflict):
        store.grants.add(grant)


def test_active_for_session_skips_expired_consumed_and_foreign(store: SqlStore) -> None:
    active = build.grant(single_use=False, binding="")
    spent = build.grant()
    expired = build.grant(expires_at=NOW + 10)
    foreign = build.grant(session_id="s2")
    for grant in (active, spent, expired, foreign):
        store.grants.add(grant)
    assert store.grants.consume(spent.id, session_id="s1", now=NOW)
    assert store.grants.active_for_session("s1", now=NOW + 10) == (active,)


def test_consume_once(store: SqlStore) -> None:
    grant = build.grant()
    store.grants.add(grant)
    assert store.grants.consume(grant.id, session_id="s1", now=NOW + 1)
    assert not store.grants.consume(grant.id, session_id="s1", now=NOW + 2)
    record = store.grants.get(grant.id)
    assert record is not None and record.consumed_at == NOW + 1


def test_expired_grant_is_not_consumable(store: SqlStore) -> None:
    grant = build.grant(expires_at=NOW + 60)
    store.grants.add(grant)
    assert not store.grants.consume(grant.id, session_id="s1", now=NOW + 60)
    assert not store.grants.consume(grant.id, session_id="s1", now=NOW + 61)
    assert store.grants.consume(grant.id, session_id="s1", now=NOW + 59.999)


def test_grant_of_another_session_is_not_consumable(store: SqlStore) -> None:
    grant = build.grant(session_id="s1")
    store.grants.add(grant)
    assert not store.grants.consume(grant.id, session_id="s2", now=NOW)
    assert not store.grants.consume("unknown", session_id="s1", now=NOW)


def test_consume_exactly_one_of_fifty_racers(store: SqlStore) -> None:
    grant = build.grant()
    store.grants.add(grant)
    results = build.race(
        50, lambda i: store.grants.consume(grant.id, session_id="s1", now=NOW + i / 100)
    )
    assert results.count(True) == 1


def test_purge_removes_long_expired(store: SqlStore) -> None:
    old, recent = build.grant(expires_at=NOW - 1), build.grant(expires_at=NOW + 1)
    store.grants.add(old)
    store.grants.add(recent)
    assert store.grants.purge(expired_before=NOW) == 1
    assert store.grants.get(old.id) is None
    assert store.grants.get(recent.id) is not None
