"""Contract: Throttle counters, shared and atomic, with the back-off of `service.throttle`."""

from __future__ import annotations

from stepguard.service.throttle import ip_key, user_factor_key
from stepguard.storage.records import ThrottleState
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW

KEY = user_factor_key("u1", "totp")


def test_unknown_key_is_clear(store: SqlStore) -> None:
    assert store.throttle.state(KEY, now=NOW) == ThrottleState()
    assert not store.throttle.state(KEY, now=NOW).locked(NOW)


def test_each_failure_doubles_the_lock(store: SqlStore) -> None:
    first = store.throttle.record_failure(KEY, now=NOW)
    second = store.throttle.record_failure(KEY, now=NOW + 1)
    third = store.throttle.record_failure(KEY, now=NOW + 3)
    assert first == ThrottleState(consecutive=1, locked_until=NOW + 1)
    assert second == ThrottleState(consecutive=2, locked_until=NOW + 3)
    assert third == ThrottleState(consecutive=3, locked_until=NOW + 7)
    assert store.throttle.state(KEY, now=NOW + 4) == third
    assert third.locked(NOW + 6.9) and not third.locked(NOW + 7)


def test_reset_clears_the_key_only(store: SqlStore) -> None:
    other = user_factor_key("u1", "webauthn")
    store.throttle.record_failure(KEY, now=NOW)
    store.throttle.record_failure(other, now=NOW)
    store.throttle.reset(KEY)
    assert store.throttle.state(KEY, now=NOW) == ThrottleState()
    assert store.throttle.state(other, now=NOW).consecutive == 1
    assert store.throttle.record_failure(KEY, now=NOW).consecutive == 1


def test_account_key_hard_locks_at_one_hundred_and_never_forgets(store: SqlStore) -> None:
    for i in range(99):
        state = store.throttle.record_failure(KEY, now=NOW + i * 1000)
    assert not state.hard_locked
    state = store.throttle.record_failure(KEY, now=NOW + 10**6)
    assert state.consecutive == 100 and state.hard_locked
    a_year_later = NOW + 10**6 + 365 * 86400
    assert store.throttle.state(KEY, now=a_year_later).hard_locked
    assert store.throttle.state(KEY, now=a_year_later).locked(a_year_later)


def test_ip_key_backs_off_never_hard_locks_and_forgets_after_an_hour(store: SqlStore) -> None:
    key = ip_key("203.0.113.9")
    for i in range(120):
        state = store.throttle.record_failure(key, now=NOW + i)
    assert state.consecutive == 120 and not state.hard_locked
    assert state.locked_until == NOW + 119 + 900
    assert store.throttle.state(key, now=NOW + 119 + 3601) == ThrottleState()
    assert store.throttle.record_failure(key, now=NOW + 119 + 3601).consecutive == 1


def test_one_hundred_concurrent_failures_are_all_counted(store: SqlStore) -> None:
    results = build.race(100, lambda _: store.throttle.record_failure(KEY, now=NOW))
    assert sorted(r.consecutive for r in results) == list(range(1, 101))
    final = store.throttle.state(KEY, now=NOW)
    assert final.consecutive == 100 and final.hard_locked
