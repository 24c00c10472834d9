"""The pure throttle rules (`core.throttle`): which keys an attempt counts under, how long each
locks, and when it is refused, from counts and times alone (no clock, no store)."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Throttled
from stepguard.core.risk import RiskHistory
from stepguard.core.throttle import (
    Attempt,
    ThrottleSettings,
    ThrottleState,
    check,
    cleared_by_success,
    client_network,
    delay_for,
    forget_before,
    ip_key,
    plan_attempt,
    policy_for,
    state_after,
    trusted_entry,
    user_device_key,
    user_factor_key,
    user_ip_key,
    user_network_key,
    user_prefix,
)

SETTINGS = ThrottleSettings()


def test_delay_doubles_from_one_second_and_caps_at_fifteen_minutes() -> None:
    delays = [delay_for(n, SETTINGS) for n in range(0, 13)]
    assert delays == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
    assert delay_for(10**9, SETTINGS) == 900


def test_hard_lock_only_for_account_keys() -> None:
    account = user_factor_key("u1", "totp")
    assert not state_after(account, 99, now=0, settings=SETTINGS).hard_locked
    assert state_after(account, 100, now=0, settings=SETTINGS).hard_locked
    assert not state_after(ip_key("192.0.2.1"), 10_000, now=0, settings=SETTINGS).hard_locked


def test_only_ip_failures_are_forgotten() -> None:
    assert forget_before(user_factor_key("u1", "totp"), now=5000, settings=SETTINGS) is None
    assert forget_before(ip_key("192.0.2.1"), now=5000, settings=SETTINGS) == 1400


def test_check_raises_for_the_longest_wait_and_for_a_hard_lock() -> None:
    check(ThrottleState(), ThrottleState(consecutive=3, locked_until=10), now=10)
    with pytest.raises(Throttled) as waited:
        check(ThrottleState(locked_until=12), ThrottleState(locked_until=40), now=10)
    assert waited.value.retry_after == 30 and not waited.value.locked
    with pytest.raises(Throttled) as locked:
        check(ThrottleState(consecutive=100, hard_locked=True), now=10)
    assert locked.value.locked


def test_each_key_shape_counts_by_its_own_rules() -> None:
    ceiling = user_factor_key("u1", "totp")
    assert [(p.free, p.hard, p.forgets) for p in (
        policy_for(ip_key("192.0.2.1"), SETTINGS),
        policy_for(user_ip_key("u1", "totp", "192.0.2.1"), SETTINGS),
        policy_for(user_device_key("u1", "totp", "d1"), SETTINGS),
        policy_for(user_network_key("u1", "totp", "192.0.2.0/24"), SETTINGS),
        policy_for(ceiling, SETTINGS),
    )] == [(10, False, True), (0, False, True), (0, True, False), (0, True, False),
           (10, True, False)]
    assert ceiling.startswith(user_prefix("u1"))


def test_an_address_slows_only_after_its_free_failures_and_the_ceiling_too() -> None:
    address = ip_key("192.0.2.1")
    assert state_after(address, 10, now=100, settings=SETTINGS).locked_until == 100
    assert state_after(address, 11, now=100, settings=SETTINGS).locked_until == 101
    own = user_ip_key("u1", "totp", "192.0.2.1")
    assert state_after(own, 1, now=100, settings=SETTINGS).locked_until == 101
    assert state_after(user_factor_key("u1", "totp"), 12, now=100,
                       settings=SETTINGS).locked_until == 102


def test_a_lock_ends_at_its_time_and_a_hard_lock_never_by_itself() -> None:
    state = ThrottleState(consecutive=3, locked_until=50)
    assert state.locked(49.9) and not state.locked(50)
    assert ThrottleState(hard_locked=True).locked(10**12)
    check(ThrottleState(locked_until=50), now=50)  # the wait is over


def test_an_unknown_client_is_checked_on_its_address_and_the_ceiling() -> None:
    attempt = plan_attempt(subject="u1", factor="totp", client_ip="192.0.2.7", device_id="d1",
                           history=RiskHistory())
    keys = (ip_key("192.0.2.7"), user_ip_key("u1", "totp", "192.0.2.7"),
            user_factor_key("u1", "totp"))
    assert attempt == Attempt(keys, keys)


def test_an_ipv6_client_is_counted_by_its_network() -> None:
    attempt = plan_attempt(subject="u1", factor="totp", client_ip="2001:db8:1:2::7",
                           device_id="", history=RiskHistory())
    prefix = client_network("2001:db8:1:2::7")
    assert prefix and ":" in prefix
    assert attempt.check[0] == ip_key(prefix)


def test_a_known_device_or_network_is_checked_only_on_its_own_key() -> None:
    ceiling = user_factor_key("u1", "totp")
    device = RiskHistory(trusted=frozenset({trusted_entry("totp", "device", "d1")}))
    attempt = plan_attempt(subject="u1", factor="totp", client_ip="192.0.2.7", device_id="d1",
                           history=device)
    own = user_device_key("u1", "totp", "d1")
    assert attempt == Attempt((own,), (own, ceiling))
    # The device is trusted for TOTP only: another factor from it is an unknown client.
    other = plan_attempt(subject="u1", factor="webauthn", client_ip="192.0.2.7",
                         device_id="d1", history=device)
    assert ip_key("192.0.2.7") in other.check
    prefix = client_network("192.0.2.7")
    network = RiskHistory(trusted=frozenset({trusted_entry("totp", "net", prefix)}))
    attempt = plan_attempt(subject="u1", factor="totp", client_ip="192.0.2.7", device_id="",
                           history=network)
    own = user_network_key("u1", "totp", prefix)
    assert attempt == Attempt((own,), (own, ceiling))


def test_no_address_means_only_the_ceiling_and_garbage_has_no_network() -> None:
    attempt = plan_attempt(subject="u1", factor="totp", client_ip="", device_id="",
                           history=RiskHistory())
    assert attempt == Attempt((user_factor_key("u1", "totp"),), (user_factor_key("u1", "totp"),))
    assert client_network("") == "" and client_network("not-an-ip") == ""


def test_a_success_clears_the_subjects_keys_but_not_a_shared_address() -> None:
    assert cleared_by_success(user_factor_key("u1", "totp"))
    assert cleared_by_success(user_ip_key("u1", "totp", "192.0.2.1"))
    assert not cleared_by_success(ip_key("192.0.2.1"))
