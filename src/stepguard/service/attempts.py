"""Throttled attempts: check every key before a verification, count a failure on every key after.

Keys name one user's one factor (`user_factor_key`) and one client address (`ip_key`); the
back-off policy itself is the pure `service.throttle`.
"""

from __future__ import annotations

from stepguard.service.runtime import Runtime
from stepguard.service.throttle import check, ip_key, user_factor_key


def attempt_keys(*, user_id: str | None, factor: str, client_ip: str) -> list[str]:
    """The throttle keys of one attempt: the user's factor (when known) and the client IP."""
    keys = [user_factor_key(user_id, factor)] if user_id else []
    return keys + ([ip_key(client_ip)] if client_ip else [])


def check_attempt(runtime: Runtime, keys: list[str]) -> None:
    """Raise `Throttled` while any key is backing off or locked."""
    now = runtime.now()
    check(*(runtime.store.throttle.state(key, now=now) for key in keys), now=now)


def count_failure(runtime: Runtime, keys: list[str], *, user_id: str | None) -> None:
    """One failure on every key, and in the user's risk history (the failed-attempts signal)."""
    now = runtime.now()
    for key in keys:
        runtime.store.throttle.record_failure(key, now=now)
    if user_id:
        runtime.store.history.record_failure(user_id, at=now)
