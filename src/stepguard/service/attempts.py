"""Throttled attempts: the store calls around one verification; the rules (which keys, how
long each locks) are the pure `core.throttle`.

`core.throttle.plan_attempt` names the keys of one attempt; `reserve` counts the attempt under
every key atomically, or raises `Throttled` and counts nothing. After the verification:
`succeeded` clears the subject's keys and gives the attempt back on the address key;
`failed` only adds the failure to the risk history (it is counted already); `abandoned`
gives it back everywhere (the attempt never reached a verdict).
"""

from __future__ import annotations

import hashlib

from stepguard.audit.ledger import pseudonymise_ip
from stepguard.core.throttle import Attempt, cleared_by_success, client_network, trusted_entry
from stepguard.service.runtime import Runtime
from stepguard.storage.records import Reserved
from stepguard.storage.sql_users import username_key


def unknown_subject(username: str) -> str:
    """The throttle subject of a username nobody has: counted exactly like a real user's, so
    the answers never tell the two apart (and the username itself is not stored)."""
    digest = hashlib.sha256(username_key(username).encode("utf-8", "replace")).hexdigest()
    return "unknown-" + digest[:32]


def reserve(runtime: Runtime, attempt: Attempt) -> tuple[Reserved, ...]:
    """Count the attempt before it is verified; `Throttled` (nothing counted) while locked."""
    return runtime.store.throttle.reserve(check=attempt.check, count=attempt.count,
                                          now=runtime.now())


def succeeded(runtime: Runtime, reserved: tuple[Reserved, ...]) -> None:
    """The secret was right: the subject's failures end; the shared address gets it back
    (one store write for all the keys)."""
    runtime.store.throttle.settle(
        clear=[one.key for one in reserved if cleared_by_success(one.key)],
        give_back=[one for one in reserved if not cleared_by_success(one.key)])


def failed(runtime: Runtime, *, user_id: str | None, reserved: tuple[Reserved, ...] = (),
           factor: str = "", client_ip: str = "") -> None:
    """The secret was wrong (already counted): remember it for the failed-attempts signal, and
    audit a lockout (`verification` / `locked`, which notifies) when this failure reached the
    hard lock of one of the user's keys."""
    if not user_id:
        return
    runtime.store.history.record_failure(user_id, at=runtime.now())
    limit = runtime.config.throttle.hard_lock_after
    if any(one.consecutive == limit and one.key.startswith("user:") and ":ip:" not in one.key
           for one in reserved):
        if client_ip and runtime.ip_key is not None:
            client_ip = pseudonymise_ip(client_ip, key=runtime.ip_key)
        runtime.record(kind="verification", subject=user_id, factor=factor, outcome="locked",
                       request={"client_ip": client_ip}, detail={"after_failures": limit})


def abandoned(runtime: Runtime, reserved: tuple[Reserved, ...]) -> None:
    """No verdict (the store failed, the challenge was gone): give the attempt back."""
    runtime.store.throttle.settle(clear=(), give_back=reserved)


def trust_client(runtime: Runtime, *, user_id: str, factor: str, client_ip: str,
                 device_id: str) -> None:
    """Remember this client as one of the owner's for `factor` (it just passed it)."""
    entries = [trusted_entry(factor, "device", device_id)] if device_id else []
    prefix = client_network(client_ip)
    entries += [trusted_entry(factor, "net", prefix)] if prefix else []
    if entries:
        runtime.store.history.record_trusted(user_id, entries=entries)
