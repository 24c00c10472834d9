"""Database tokens (the postgres door's sign-in) in SQL, and in memory for `MemoryStore` tests.

A token is looked up by id; only its SCRAM verifier is kept. Revocation is one statement, so a
token is valid or not for every instance sharing the store.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from stepguard.storage.db_token_tables import db_tokens
from stepguard.storage.sql_base import Database

_T = db_tokens.c


@dataclass(frozen=True, slots=True, kw_only=True)
class DbTokenRecord:
    id: str
    user_id: str
    session_id: str
    verifier: str
    level: str
    created: float
    expires: float
    revoked_at: float | None = None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires


class DbTokens(Protocol):
    def add(self, record: DbTokenRecord) -> None: ...
    def get(self, token_id: str) -> DbTokenRecord | None: ...
    def for_user(self, user_id: str, *, now: float) -> tuple[DbTokenRecord, ...]: ...
    def revoke(self, token_id: str, *, user_id: str, now: float) -> bool: ...


class SqlDbTokens:
    def __init__(self, engine: Engine) -> None:
        self._db = Database(engine)

    def add(self, record: DbTokenRecord) -> None:
        with self._db.write() as connection:
            connection.execute(insert(db_tokens), _row(record))

    def get(self, token_id: str) -> DbTokenRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(db_tokens).where(_T.id == token_id)).mappings().first()
        return None if row is None else DbTokenRecord(**dict(row))

    def for_user(self, user_id: str, *, now: float) -> tuple[DbTokenRecord, ...]:
        query = (select(db_tokens)
                 .where(_T.user_id == user_id, _T.revoked_at.is_(None), _T.expires > now)
                 .order_by(_T.created))
        with self._db.read() as connection:
            return tuple(DbTokenRecord(**dict(r)) for r in connection.execute(query).mappings())

    def revoke(self, token_id: str, *, user_id: str, now: float) -> bool:
        query = (update(db_tokens)
                 .where(_T.id == token_id, _T.user_id == user_id, _T.revoked_at.is_(None))
                 .values(revoked_at=now))
        with self._db.write() as connection:
            return connection.execute(query).rowcount == 1


class MemoryDbTokens:
    def __init__(self) -> None:
        self._items: dict[str, DbTokenRecord] = {}
        self._lock = threading.Lock()

    def add(self, record: DbTokenRecord) -> None:
        with self._lock:
            self._items[record.id] = record

    def get(self, token_id: str) -> DbTokenRecord | None:
        return self._items.get(token_id)

    def for_user(self, user_id: str, *, now: float) -> tuple[DbTokenRecord, ...]:
        return tuple(sorted((t for t in self._items.values()
                             if t.user_id == user_id and t.live(now)), key=lambda t: t.created))

    def revoke(self, token_id: str, *, user_id: str, now: float) -> bool:
        with self._lock:
            found = self._items.get(token_id)
            if found is None or found.user_id != user_id or found.revoked_at is not None:
                return False
            self._items[token_id] = replace(found, revoked_at=now)
            return True


_MEMORY: dict[int, MemoryDbTokens] = {}


def db_tokens_of(store: Any) -> DbTokens:
    """The database token role of a store: on its engine, or kept beside a memory store."""
    engine = getattr(store, "engine", None)
    if engine is not None:
        return SqlDbTokens(engine)
    return _MEMORY.setdefault(id(store), MemoryDbTokens())


def _row(record: DbTokenRecord) -> dict[str, Any]:
    return {"id": record.id, "user_id": record.user_id, "session_id": record.session_id,
            "verifier": record.verifier, "level": record.level, "created": record.created,
            "expires": record.expires, "revoked_at": record.revoked_at}
