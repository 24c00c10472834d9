"""Contract: Throttle counters, shared and atomic, with the back-off of `core.throttle`."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Throttled
from stepguard.core.throttle import (
    ThrottleState,
    ip_key,
    user_device_key,
    user_factor_key,
    user_ip_key,
)
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW

KEY = user_factor_key("u1", "totp")


def test_unknown_key_is_clear(store: SqlStore) -> None:
    assert store.throttle.state(KEY, now=NOW) == ThrottleState()
    assert not store.throttle.state(KEY, now=NOW).locked(NOW)


def test_each_failure_doubles_the_lock(store: SqlStore) -> None:
    key = user_device_key("u1", "totp", "device-1")
    first = store.throttle.record_failure(key, now=NOW)
    second = store.throttle.record_failure(key, now=NOW + 1)
    third = store.throttle.record_failure(key, now=NOW + 3)
    assert first == ThrottleState(consecutive=1, locked_until=NOW + 1)
    assert second == ThrottleState(consecutive=2, locked_until=NOW + 3)
    assert third == ThrottleState(consecutive=3, locked_until=NOW + 7)
    assert store.throttle.state(key, now=NOW + 4) == third
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


# --------------------------------------------------------------------------- reserve, then verify

DEVICE = user_device_key("u1", "totp", "device-1")


def test_a_reservation_counts_the_attempt_before_it_is_verified(store: SqlStore) -> None:
    reserved = store.throttle.reserve(check=[DEVICE], count=[DEVICE], now=NOW)
    assert [(r.key, r.prior, r.consecutive) for r in reserved] == [(DEVICE, ThrottleState(), 1)]
    assert store.throttle.state(DEVICE, now=NOW) == ThrottleState(
        consecutive=1, locked_until=NOW + 1)
    with pytest.raises(Throttled) as waited:
        store.throttle.reserve(check=[DEVICE], count=[DEVICE], now=NOW + 0.5)
    assert waited.value.retry_after == 0.5
    assert store.throttle.state(DEVICE, now=NOW).consecutive == 1  # a refused try is not counted


def test_one_of_a_hundred_concurrent_reservations_gets_through(store: SqlStore) -> None:
    keys = [ip_key("203.0.113.9"), user_ip_key("u1", "totp", "203.0.113.9"), KEY]

    def attempt(_: int) -> bool:
        try:
            store.throttle.reserve(check=keys, count=keys, now=NOW)
        except Throttled:
            return False
        return True

    assert build.race(100, attempt).count(True) == 1
    assert store.throttle.state(keys[1], now=NOW).consecutive == 1
    assert store.throttle.state(KEY, now=NOW).consecutive == 1


def test_concurrent_reservations_never_count_past_the_hard_limit(store: SqlStore) -> None:
    for i in range(99):
        store.throttle.record_failure(DEVICE, now=NOW - 10**6 + i * 1000)
    results = build.race(100, lambda _: _reserve_or_none(store, [DEVICE], NOW))
    assert sum(r is not None for r in results) == 1
    final = store.throttle.state(DEVICE, now=NOW)
    assert final.consecutive == 100 and final.hard_locked  # SECURITY.md case 7


def test_keys_only_counted_are_not_checked(store: SqlStore) -> None:
    store.throttle.record_failure(DEVICE, now=NOW)  # locked for 1 s
    reserved = store.throttle.reserve(check=[], count=[DEVICE], now=NOW)
    assert reserved[0].consecutive == 2 and reserved[0].prior.consecutive == 1


def test_release_gives_back_the_reserved_attempt(store: SqlStore) -> None:
    key = ip_key("198.51.100.4")
    store.throttle.record_failure(key, now=NOW - 5000)  # forgotten by NOW
    first = store.throttle.record_failure(key, now=NOW)
    (reserved,) = store.throttle.reserve(check=[], count=[key], now=NOW + 1)
    assert reserved.prior == first and reserved.consecutive == 2
    store.throttle.release(reserved)
    assert store.throttle.state(key, now=NOW + 1) == first
    (fresh,) = store.throttle.reserve(check=[], count=[DEVICE], now=NOW)
    store.throttle.release(fresh)
    assert store.throttle.state(DEVICE, now=NOW) == ThrottleState()


def test_release_after_other_attempts_only_takes_one_back(store: SqlStore) -> None:
    (mine,) = store.throttle.reserve(check=[], count=[DEVICE], now=NOW)
    store.throttle.record_failure(DEVICE, now=NOW)
    store.throttle.release(mine)
    assert store.throttle.state(DEVICE, now=NOW) == ThrottleState(
        consecutive=1, locked_until=NOW + 2)


def test_settle_clears_some_keys_and_gives_the_others_back_at_once(store: SqlStore) -> None:
    address, other = ip_key("198.51.100.4"), user_factor_key("u2", "totp")
    earlier = store.throttle.record_failure(address, now=NOW)
    store.throttle.record_failure(KEY, now=NOW)
    store.throttle.record_failure(other, now=NOW)
    reserved = store.throttle.reserve(check=[], count=[KEY, DEVICE, address], now=NOW + 1)
    by_key = {one.key: one for one in reserved}
    store.throttle.record_failure(DEVICE, now=NOW + 1)  # someone else's, after mine
    store.throttle.settle(clear=[KEY], give_back=[by_key[address], by_key[DEVICE]])
    assert store.throttle.state(KEY, now=NOW + 1) == ThrottleState()  # cleared
    assert store.throttle.state(address, now=NOW + 1) == earlier  # mine given back
    assert store.throttle.state(DEVICE, now=NOW + 1).consecutive == 1  # only mine taken back
    assert store.throttle.state(other, now=NOW + 1).consecutive == 1  # not named: untouched
    store.throttle.settle(clear=[], give_back=[])  # nothing to do
    assert store.throttle.state(other, now=NOW + 1).consecutive == 1


def test_the_per_user_ceiling_only_slows_after_its_free_failures(store: SqlStore) -> None:
    for i in range(10):
        assert not store.throttle.record_failure(KEY, now=NOW + i).locked(NOW + i)
    assert store.throttle.record_failure(KEY, now=NOW + 10).locked_until == NOW + 11


def test_reset_user_clears_every_key_of_that_user_only(store: SqlStore) -> None:
    mine = [KEY, DEVICE, user_ip_key("u1", "password", "2001:db8::1")]
    others = [user_factor_key("u10", "totp"), ip_key("192.0.2.1")]
    for key in mine + others:
        store.throttle.record_failure(key, now=NOW)
    store.throttle.reset_user("u1")
    assert all(store.throttle.state(k, now=NOW) == ThrottleState() for k in mine)
    assert all(store.throttle.state(k, now=NOW).consecutive == 1 for k in others)


def _reserve_or_none(store: SqlStore, keys: list[str], now: float) -> object:
    try:
        return store.throttle.reserve(check=keys, count=keys, now=now)
    except Throttled:
        return None
