"""Brute-force back-off (pure): how long a throttle key is locked after N consecutive failures.

Two kinds of key are counted, both in the shared store so every instance sees the same counts:

* ``user:<id>:factor:<kind>`` - one user's one factor. Each consecutive failure doubles the wait
  before the next attempt (1 s, 2 s, 4 s, ... capped at 15 min). At 100 consecutive failures the
  key is hard-locked (NIST SP 800-63B rev 4, OWASP ASVS V6.3.1). A success with the same factor
  resets the count; a hard lock is cleared only by an administrator's reset or by the user
  succeeding with a *different* strong factor (the service calls ``Throttle.reset`` for the
  locked key then). The count never decays by itself: failures are consecutive until a success.
* ``ip:<address>`` - one client address across all users. The same doubling back-off, capped at
  15 min, never hard-locked, and forgotten after an hour without failures (addresses are shared
  and reassigned).

Trade-off: the account key is shared by everyone who tries that user's factor, so an attacker
spraying one account does slow the real user down - but by at most 15 min between attempts (the
cap), and not at all with the user's other factors. The attacker's own address is slowed by the
IP key on every account it tries, while the real user's address is never touched by it. An
attacker with many addresses still meets the account key, and the hard lock bounds the total
number of guesses at 100 per factor.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepguard.core.errors import Throttled
from stepguard.storage.records import ThrottleState

_MAX_DOUBLINGS = 62


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """Back-off parameters (seconds); the defaults follow SECURITY.md."""

    base_delay: float = 1.0
    max_delay: float = 900.0
    hard_limit: int = 100
    ip_forget_after: float = 3600.0


def user_factor_key(user_id: str, kind: str) -> str:
    """Throttle key for one user's one factor."""
    return f"user:{user_id}:factor:{kind}"


def ip_key(address: str) -> str:
    """Throttle key for one client address."""
    return f"ip:{address}"


def is_account_key(key: str) -> bool:
    return key.startswith("user:")


def delay_for(consecutive: int, settings: ThrottleSettings) -> float:
    """Seconds to wait after `consecutive` failures: 0, then base doubling, capped at max."""
    if consecutive <= 0:
        return 0.0
    doublings = min(consecutive - 1, _MAX_DOUBLINGS)
    return min(settings.max_delay, settings.base_delay * 2.0**doublings)


def state_after(
    key: str, consecutive: int, *, now: float, settings: ThrottleSettings
) -> ThrottleState:
    """The throttle state right after the `consecutive`-th failure under `key` at `now`."""
    hard = is_account_key(key) and consecutive >= settings.hard_limit
    return ThrottleState(
        consecutive=consecutive,
        locked_until=now + delay_for(consecutive, settings),
        hard_locked=hard,
    )


def forget_before(key: str, *, now: float, settings: ThrottleSettings) -> float | None:
    """Failures older than this no longer count under `key` (None: they always count)."""
    return None if is_account_key(key) else now - settings.ip_forget_after


def check(*states: ThrottleState, now: float) -> None:
    """Raise `Throttled` if any state forbids an attempt at `now` (hard lock wins)."""
    if any(state.hard_locked for state in states):
        raise Throttled(0.0, locked=True)
    wait = max((state.locked_until - now for state in states), default=0.0)
    if wait > 0:
        raise Throttled(wait)
