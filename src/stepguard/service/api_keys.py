"""Decision API client keys: issue, rotate, revoke, list, and authenticate a presented key.

A key reads `sgk_<id>_<secret>`: the id (64 bits, hex) finds the row, the secret (256 bits from
`secrets`) proves possession. Only SHA-256(secret) is stored — a salt or a slow hash would add
nothing to a 256-bit random secret. Comparison is constant-time (`hmac.compare_digest`), an
unknown id costs the same comparison as a known one, and every refusal is audited (never with
the key). Rotation may keep the previous secret valid for a grace period so that clients can
be redeployed without an outage; revocation ends both at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from stepguard.core.errors import StepguardError, VerificationFailed
from stepguard.service.runtime import Runtime
from stepguard.storage.records import ApiKeyRecord
from stepguard.storage.sql_api_keys import SqlApiKeys

KEY_PREFIX = "sgk"
TOUCH_EVERY = 60.0  # seconds between `last_used` writes for one key
_KEY_SHAPE = re.compile(r"sgk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_NAME_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DUMMY_HASH = hashlib.sha256(b"stepguard-no-such-key").hexdigest()


class ApiKeyNotFound(StepguardError):
    """No live API key has this name."""


@dataclass(frozen=True)
class IssuedKey:
    """A new or rotated key. `key` is shown once and never stored."""

    record: ApiKeyRecord
    key: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class ApiKeys:
    def __init__(self, runtime: Runtime, store: SqlApiKeys | None = None) -> None:
        self.rt = runtime
        self.store = store or runtime.store.api_keys

    def create(self, name: str, *, by: str = "cli") -> IssuedKey:
        if not _NAME_SHAPE.fullmatch(name):
            raise ValueError("a key name is 1-64 letters, digits, '.', '_' or '-'")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        record = ApiKeyRecord(id=key_id, name=name, secret_hash=secret_hash(secret),
                              created=self.rt.now())
        self.store.add(record)
        self._audit("api_key_created", record, by)
        return IssuedKey(record, _format(key_id, secret))

    def rotate(self, name: str, *, grace: float = 0.0, by: str = "cli") -> IssuedKey:
        """A new secret for the key; the old one keeps working for `grace` seconds."""
        record = self._live(name)
        secret, now = secrets.token_urlsafe(32), self.rt.now()
        if not self.store.rotate(record.id, new_hash=secret_hash(secret),
                                 previous_until=now + max(0.0, grace), now=now):
            raise ApiKeyNotFound(f"no live API key named {name!r}")
        self._audit("api_key_rotated", record, by, grace=grace)
        return IssuedKey(self.store.get(record.id) or record, _format(record.id, secret))

    def revoke(self, name: str, *, by: str = "cli") -> None:
        record = self._live(name)
        if not self.store.revoke(record.id, now=self.rt.now()):
            raise ApiKeyNotFound(f"no live API key named {name!r}")
        self._audit("api_key_revoked", record, by)

    def list(self) -> tuple[ApiKeyRecord, ...]:
        return self.store.list()

    def authenticate(self, presented: str | None) -> ApiKeyRecord:
        """The live key a client presented; `VerificationFailed` (audited) otherwise."""
        match = _KEY_SHAPE.fullmatch(presented or "")
        key_id, secret = match.groups() if match else ("", "")
        record = self.store.get(key_id) if key_id else None
        now = self.rt.now()
        if not _secret_matches(record, secret_hash(secret), now) or record is None:
            self._refused(key_id if record is not None else "", "invalid" if match else "malformed")
            raise VerificationFailed("the API key is missing, malformed, revoked or wrong",
                                     code="api_key")
        if record.last_used is None or now - record.last_used >= TOUCH_EVERY:
            self.store.touch(record.id, now=now)
        return record

    def _live(self, name: str) -> ApiKeyRecord:
        record = self.store.by_name(name)
        if record is None or record.revoked_at is not None:
            raise ApiKeyNotFound(f"no live API key named {name!r}")
        return record

    def _audit(self, outcome: str, record: ApiKeyRecord, by: str, **extra: object) -> None:
        self.rt.record(kind="admin", outcome=outcome,
                       detail={"key_id": record.id, "name": record.name, "by": by, **extra})

    def _refused(self, key_id: str, why: str) -> None:
        self.rt.record(kind="verification", factor="api_key", outcome=f"failed:{why}",
                       detail={"key_id": key_id})


def _secret_matches(record: ApiKeyRecord | None, presented: str, now: float) -> bool:
    """Constant-time check against the current (and, in its grace period, previous) secret."""
    if record is None:
        hmac.compare_digest(presented, _DUMMY_HASH)
        return False
    current = hmac.compare_digest(presented, record.secret_hash)
    previous = hmac.compare_digest(presented, record.previous_hash or _DUMMY_HASH) and \
        record.previous_until is not None and now < record.previous_until
    return record.revoked_at is None and (current or previous)


def _format(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"
