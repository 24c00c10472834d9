"""Small record builders for the contract tests (fixed times: storage never reads the clock)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from stepguard.core.context import AuthEvent
from stepguard.core.decision import Requirement
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.storage.records import (
    ChallengeRecord,
    FactorRecord,
    PushRecord,
    SessionRecord,
    UserRecord,
)

T = TypeVar("T")
NOW = 1_700_000_000.0


def new_id() -> str:
    return uuid.uuid4().hex


def user(username: str = "alice", **fields: Any) -> UserRecord:
    values: dict[str, Any] = {"id": new_id(), "username": username, "created": NOW}
    return UserRecord(**{**values, **fields})


def factor(user_id: str, kind: str = "totp", **fields: Any) -> FactorRecord:
    values: dict[str, Any] = {"id": new_id(), "user_id": user_id, "kind": kind, "created": NOW}
    return FactorRecord(**{**values, **fields})


def event(factor: str = "password", level: Level = Level.AAL1, at: float = NOW) -> AuthEvent:
    amr = {"password": ("pwd",), "totp": ("otp",), "webauthn": ("hwk", "user")}[factor]
    return AuthEvent(factor=factor, amr=amr, level=level, at=at)


def session(user_id: str, **fields: Any) -> SessionRecord:
    values: dict[str, Any] = {
        "id": new_id(),
        "token_hash": new_id() + new_id(),
        "user_id": user_id,
        "created": NOW,
        "last_seen": NOW,
        "ip": "192.0.2.7",
        "user_agent": "Firefox",
        "device_id": "device-1",
        "events": (event(),),
    }
    return SessionRecord(**{**values, **fields})


def challenge(**fields: Any) -> ChallengeRecord:
    values: dict[str, Any] = {
        "id": new_id(),
        "user_id": "u1",
        "session_id": "s1",
        "requirement": Requirement(
            level=Level.AAL2,
            max_age=300.0,
            methods=frozenset({"webauthn", "totp"}),
            scope="admin",
            single_use=True,
            bind=("amount", "payee"),
            reason="Approve a transfer of {amount} to {payee}",
        ),
        "reasons": ("Approve a transfer of 5000 to Bob",),
        "reason_texts": (("en", "Approve a transfer of 5000 to Bob"),
                         ("de", "Überweisung von 5000 an Bob freigeben")),
        "rule": "large-transfer",
        "scope": "admin",
        "binding": "ab" * 32,
        "bound_values": (("amount", "5000"), ("payee", "Bob")),
        "return_url": "https://app.example.com/pay?x=1",
        "held_method": "POST",
        "held_headers": (("content-type", "application/x-www-form-urlencoded"), ("x-a", "1")),
        "held_body": b"amount=5000&payee=Bob\x00\xff",
        "created": NOW,
        "expires": NOW + 300,
    }
    return ChallengeRecord(**{**values, **fields})


def grant(session_id: str = "s1", **fields: Any) -> Grant:
    values: dict[str, Any] = {
        "id": new_id(),
        "subject_id": "u1",
        "session_id": session_id,
        "scope": "admin",
        "level": Level.AAL2,
        "amr": ("otp", "pwd"),
        "granted_at": NOW,
        "expires_at": NOW + 300,
        "single_use": True,
        "binding": "cd" * 32,
        "factor": "totp",
    }
    return Grant(**{**values, **fields})


def race(count: int, action: Callable[[int], T]) -> list[T]:
    """Run `action(i)` in `count` threads released together; the results in order."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        barrier.wait()
        return action(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def push(user_id: str, **fields: Any) -> PushRecord:
    values: dict[str, Any] = {
        "id": new_id(),
        "challenge_id": "c1",
        "user_id": user_id,
        "requesting_session_id": "s1",
        "number": 42,
        "options": (17, 42, 88),
        "nonce": "n" * 43,
        "digest": "ef" * 32,
        "created": NOW,
        "expires": NOW + 120,
        "client_ip": "198.51.100.4",
        "user_agent": "Mozilla/5.0 Firefox/128.0",
        "location": "Berlin, DE",
    }
    return PushRecord(**{**values, **fields})
