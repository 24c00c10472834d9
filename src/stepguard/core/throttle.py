"""Brute-force back-off (pure): which keys an attempt is counted under, and how long each locks.

Everything here is a function of counts, times and settings passed in: no clock, no store. The
stores (`storage.sql_throttle`, `storage.memory`, `storage.redis_throttle`) keep the counts and
call `state_after` / `forget_before` / `check`; `service.attempts` makes the store calls around
one verification with the keys `plan_attempt` names.

Reserve, then verify: an attempt is counted under its keys *before* its secret is checked, in
one atomic step that first refuses it if any checked key is locked (`Throttle.reserve`). So
parallel guesses cannot all pass the check: the first one locks the key for the others. A
success afterwards clears the user's keys and gives the reservation back on the shared ones.

Four kinds of key, all in the shared store so every instance sees the same counts (a
*subject* is a user id, or a keyed digest of an unknown username so that both answer alike):

* ``ip:<address>`` - one client address across all subjects. Doubling back-off after
  `free_failures` failures (addresses are shared by offices and carriers), capped at
  `max_delay`, never hard-locked, forgotten after `ip_forget_after` without failures.
* ``user:<s>:factor:<kind>:ip:<address>`` - one subject's factor from one address. Doubling
  back-off from the first failure, never hard-locked, forgotten like an address.
* ``user:<s>:factor:<kind>:device:<id>`` and ``...:net:<prefix>`` - one subject's factor from
  one of the owner's *known* clients: a device (signed device cookie) or a network where this
  factor succeeded before. Doubling back-off from the first failure; hard-locked at
  `hard_limit`; never forgotten.
* ``user:<s>:factor:<kind>`` - the per-subject ceiling, counted by every attempt. It only slows:
  no delay for `free_failures` failures, then doubling back-off; at `hard_limit` consecutive
  failures (NIST SP 800-63B rev 4) unknown clients are refused until a success, an operator's
  `stepguard users unlock` / admin Unlock, or a new password.

Unknown clients are checked against the address, subject+address and ceiling keys; a known
client only against its own key, so an attacker elsewhere - whatever the ceiling says - never
locks the owner's known device or network out. The attacker meets their own address's back-off
and the ceiling; with many addresses, the ceiling still bounds them to `hard_limit` guesses.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepguard.core.errors import StepguardError, Throttled
from stepguard.core.risk import RiskHistory, network_prefix

_MAX_DOUBLINGS = 62


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleState:
    """Failures counted under one throttle key and the lock they caused.

    `locked_until` is an epoch time (0 = not locked); `hard_locked` stays set until `reset`.
    """

    consecutive: int = 0
    locked_until: float = 0.0
    hard_locked: bool = False

    def locked(self, now: float) -> bool:
        return self.hard_locked or now < self.locked_until


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """Back-off parameters (seconds); the defaults follow SECURITY.md."""

    base_delay: float = 1.0
    max_delay: float = 900.0
    hard_limit: int = 100
    ip_forget_after: float = 3600.0
    free_failures: int = 10  # failures an address or the per-user ceiling allow before slowing


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """How one key counts: failures before the back-off, hard lock, forgetting."""

    free: int
    hard: bool
    forgets: bool


def user_factor_key(subject: str, kind: str) -> str:
    """The per-subject ceiling for one factor."""
    return f"user:{subject}:factor:{kind}"


def user_ip_key(subject: str, kind: str, address: str) -> str:
    """One subject's factor tried from one client address."""
    return f"{user_factor_key(subject, kind)}:ip:{address}"


def user_device_key(subject: str, kind: str, device_id: str) -> str:
    """One subject's factor tried from one of the owner's known devices."""
    return f"{user_factor_key(subject, kind)}:device:{device_id}"


def user_network_key(subject: str, kind: str, prefix: str) -> str:
    """One subject's factor tried from one of the owner's known networks."""
    return f"{user_factor_key(subject, kind)}:net:{prefix}"


def user_prefix(subject: str) -> str:
    """Every key of one subject starts with this (`Throttle.reset_user`)."""
    return f"user:{subject}:"


def ip_key(address: str) -> str:
    """Throttle key for one client address."""
    return f"ip:{address}"


def policy_for(key: str, settings: ThrottleSettings) -> KeyPolicy:
    """The counting rules of `key`, from its shape."""
    if key.startswith("ip:"):
        return KeyPolicy(settings.free_failures, hard=False, forgets=True)
    if ":device:" in key or ":net:" in key:
        return KeyPolicy(0, hard=True, forgets=False)
    if ":ip:" in key:
        return KeyPolicy(0, hard=False, forgets=True)
    return KeyPolicy(settings.free_failures, hard=True, forgets=False)


def delay_for(failures: int, settings: ThrottleSettings) -> float:
    """Seconds to wait after `failures` counted failures: 0, then base doubling, capped at max."""
    if failures <= 0:
        return 0.0
    doublings = min(failures - 1, _MAX_DOUBLINGS)
    return min(settings.max_delay, settings.base_delay * 2.0**doublings)


def state_after(
    key: str, consecutive: int, *, now: float, settings: ThrottleSettings
) -> ThrottleState:
    """The throttle state right after the `consecutive`-th failure under `key` at `now`."""
    policy = policy_for(key, settings)
    return ThrottleState(
        consecutive=consecutive,
        locked_until=now + delay_for(consecutive - policy.free, settings),
        hard_locked=policy.hard and consecutive >= settings.hard_limit,
    )


def forget_before(key: str, *, now: float, settings: ThrottleSettings) -> float | None:
    """Failures older than this no longer count under `key` (None: they always count)."""
    return now - settings.ip_forget_after if policy_for(key, settings).forgets else None


def check(*states: ThrottleState, now: float) -> None:
    """Raise `Throttled` if any state forbids an attempt at `now` (hard lock wins)."""
    if any(state.hard_locked for state in states):
        raise Throttled(0.0, locked=True)
    wait = max((state.locked_until - now for state in states), default=0.0)
    if wait > 0:
        raise Throttled(wait)


def cleared_by_success(key: str) -> bool:
    """Whether a success ends the failures under `key` (the subject's own keys) rather than
    only giving its attempt back (a shared address: others' failures there still count)."""
    return key.startswith("user:")


# --- the keys of one attempt ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """The keys one attempt is checked against and counted under (`check` ⊆ `count`)."""

    check: tuple[str, ...]
    count: tuple[str, ...]


def trusted_entry(factor: str, kind: str, value: str) -> str:
    """How the risk history remembers a client that passed `factor` (`RiskHistory.trusted`)."""
    return f"{factor}|{kind}|{value}"


def client_network(client_ip: str) -> str:
    """The client's network prefix, or "" when the address is missing or not an address."""
    try:
        return network_prefix(client_ip) if client_ip else ""
    except StepguardError:
        return ""


def plan_attempt(*, subject: str, factor: str, client_ip: str, device_id: str,
                 history: RiskHistory) -> Attempt:
    """The throttle keys of one attempt at `factor` by `subject` from this client: an unknown
    client is checked against its address, the subject+address and the subject's ceiling; one
    of the owner's known clients for this factor (a device that passed it before, or a network
    where it passed) only against its own key, and counted under the ceiling too."""
    ceiling = user_factor_key(subject, factor)
    prefix = client_network(client_ip)
    if device_id and trusted_entry(factor, "device", device_id) in history.trusted:
        own = user_device_key(subject, factor, device_id)
    elif prefix and trusted_entry(factor, "net", prefix) in history.trusted:
        own = user_network_key(subject, factor, prefix)
    else:
        # An IPv6 client owns its whole /64: counting single addresses would be no limit.
        address = prefix if ":" in client_ip and prefix else client_ip
        keys = (ip_key(address), user_ip_key(subject, factor, address)) if address else ()
        return Attempt((*keys, ceiling), (*keys, ceiling))
    return Attempt((own,), (own, ceiling))
