"""Database tokens: how a human signs in to the postgres door with their Stepguard identity.

A token is issued to a signed-in portal session (the account page or `stepguard db-login`) and
bound to it: it works only while that session is alive, and every step-up a statement needs is
a challenge of that session, passed in the same browser. The client signs in with SCRAM-SHA-256
as `<username>.<token id>` and the token as password; only the SCRAM verifier is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from stepguard.pgwire.scram import Verifier, make_verifier
from stepguard.service.runtime import Runtime
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.storage.sql_db_tokens import DbTokenRecord, DbTokens, db_tokens_of

ID_BYTES = 8  # 16 hex characters in the user name
SECRET_BYTES = 32  # 256 bits


@dataclass(frozen=True)
class Issued:
    record: DbTokenRecord
    user_name: str  # what the client sends as its user name
    secret: str  # shown once


class TokenService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.tokens: DbTokens = db_tokens_of(runtime.store)
        self._decoy_key = secrets.token_bytes(32)

    def issue(self, session: SessionRecord, user: UserRecord, *, level: str) -> Issued:
        now = self.rt.now()
        secret = secrets.token_urlsafe(SECRET_BYTES)
        record = DbTokenRecord(
            id=secrets.token_hex(ID_BYTES), user_id=user.id, session_id=session.id,
            verifier=make_verifier(secret).encode(), level=level, created=now,
            expires=now + self.rt.config.postgres.token_ttl)
        self.tokens.add(record)
        self.rt.record(kind="session", subject=user.id, session_id=session.id,
                       outcome="db_token_issued", detail={"token": record.id, "level": level})
        return Issued(record, f"{user.username}.{record.id}", secret)

    def revoke(self, token_id: str, *, user_id: str) -> bool:
        done = self.tokens.revoke(token_id, user_id=user_id, now=self.rt.now())
        if done:
            self.rt.record(kind="session", subject=user_id, outcome="db_token_revoked",
                           detail={"token": token_id})
        return done

    def lookup(self, user_name: str) -> tuple[DbTokenRecord, UserRecord] | None:
        """The live token and its user named by a client's user name, or None."""
        username, _, token_id = user_name.rpartition(".")
        if not username or len(token_id) != 2 * ID_BYTES:
            return None
        record = self.tokens.get(token_id)
        if record is None or not record.live(self.rt.now()):
            return None
        user = self.rt.store.users.get(record.user_id)
        if user is None or user.disabled or not hmac.compare_digest(
                user.username.encode(), username.encode()):
            return None
        return record, user

    def decoy(self, user_name: str) -> Verifier:
        """A verifier for an unknown name: the exchange runs to the end and fails the same way,
        so the answer never tells whether a user or token exists."""
        salt = hmac.new(self._decoy_key, user_name.encode(), hashlib.sha256).digest()[:16]
        return Verifier(salt, 4096, secrets.token_bytes(32), secrets.token_bytes(32))


def connection_string(*, host: str, port: int, user_name: str, secret: str, database: str,
                      sslmode: str = "prefer") -> str:
    """A ready `psql` connection string."""
    return (f"postgresql://{quote(user_name, safe='')}:{quote(secret, safe='')}@{host}:{port}/"
            f"{quote(database, safe='')}?sslmode={sslmode}")
