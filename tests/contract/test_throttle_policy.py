"""The pure back-off policy (`service.throttle`): no store needed."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Throttled
from stepguard.service.throttle import (
    ThrottleSettings,
    check,
    delay_for,
    forget_before,
    ip_key,
    state_after,
    user_factor_key,
)
from stepguard.storage.records import ThrottleState

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
