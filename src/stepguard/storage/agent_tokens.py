"""Agent tokens: per-user credentials an AI agent presents to the MCP door.

One row per token (created by migration `0008_mcp`). Only the SHA-256 of the token's 256-bit
secret is stored; revocation is one statement, so a token is either valid or not for every
instance sharing the store; it also raises the version of the agent's session (`session_of`:
the id its grants are bound to) or of its user, so a copy cached behind the version board
(`service.agent_tokens`) is dropped by the very next request. `SqlAgentTokens` and
`MemoryAgentTokens` hold the same contract (tests/contract/test_agent_tokens.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Column, Double, Index, String, Table, exc, insert, select, update
from sqlalchemy.engine import Engine

from stepguard.core.errors import Conflict
from stepguard.storage.engine import metadata
from stepguard.storage.sql_base import Database, bump_session, bump_user, is_conflict

agent_tokens = Table(
    "agent_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created", Double, nullable=False),
    Column("expires", Double, nullable=False),
    Column("last_used", Double, nullable=True),
    Column("revoked_at", Double, nullable=True),
    Index("ix_agent_tokens_user", "user_id"),
)
_A = agent_tokens.c


def session_of(token_id: str) -> str:
    """The session id an agent token's decisions and grants are bound to."""
    return f"agent-{token_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTokenRecord:
    """One agent token of one user; the token itself is never stored."""

    id: str
    user_id: str
    name: str
    secret_hash: str
    created: float
    expires: float
    last_used: float | None = None
    revoked_at: float | None = None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires


class SqlAgentTokens:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def on(cls, engine: Engine) -> SqlAgentTokens:
        return cls(Database(engine))

    def add(self, record: AgentTokenRecord) -> None:
        with self._db.write() as connection:
            try:
                connection.execute(insert(agent_tokens), _row(record))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("an agent token with this id already exists") from None
                raise

    def get(self, token_id: str) -> AgentTokenRecord | None:
        with self._db.read() as connection:
            row = connection.execute(
                select(agent_tokens).where(_A.id == token_id)).mappings().first()
        return None if row is None else AgentTokenRecord(**dict(row))

    def for_user(self, user_id: str) -> tuple[AgentTokenRecord, ...]:
        query = select(agent_tokens).where(_A.user_id == user_id).order_by(_A.created, _A.id)
        with self._db.read() as connection:
            return tuple(AgentTokenRecord(**dict(r)) for r in connection.execute(query).mappings())

    def revoke(self, token_id: str, *, user_id: str | None, now: float) -> bool:
        """Revoke a live token (of `user_id`, when given): True for the one call that did."""
        condition = [_A.id == token_id, _A.revoked_at.is_(None)]
        if user_id is not None:
            condition.append(_A.user_id == user_id)
        with self._db.write() as connection:
            query = update(agent_tokens).where(*condition).values(revoked_at=now)
            done = connection.execute(query).rowcount == 1
            if done:
                bump_session(connection, session_of(token_id))
            return done

    def revoke_all_for_user(self, user_id: str, *, now: float) -> int:
        query = (update(agent_tokens).where(_A.user_id == user_id, _A.revoked_at.is_(None))
                 .values(revoked_at=now))
        with self._db.write() as connection:
            count = int(connection.execute(query).rowcount)
            bump_user(connection, user_id)
            return count

    def touch(self, token_id: str, *, now: float) -> bool:
        with self._db.write() as connection:
            query = update(agent_tokens).where(_A.id == token_id).values(last_used=now)
            return connection.execute(query).rowcount == 1


class MemoryAgentTokens:
    """The same contract in memory (unit tests, `MemoryStore`)."""

    def __init__(self) -> None:
        self._rows: dict[str, AgentTokenRecord] = {}
        self._lock = threading.Lock()

    def add(self, record: AgentTokenRecord) -> None:
        with self._lock:
            if record.id in self._rows:
                raise Conflict("an agent token with this id already exists")
            self._rows[record.id] = record

    def get(self, token_id: str) -> AgentTokenRecord | None:
        return self._rows.get(token_id)

    def for_user(self, user_id: str) -> tuple[AgentTokenRecord, ...]:
        rows = [r for r in self._rows.values() if r.user_id == user_id]
        return tuple(sorted(rows, key=lambda r: (r.created, r.id)))

    def revoke(self, token_id: str, *, user_id: str | None, now: float) -> bool:
        with self._lock:
            row = self._rows.get(token_id)
            if row is None or row.revoked_at is not None or user_id not in (None, row.user_id):
                return False
            self._rows[token_id] = replace(row, revoked_at=now)
            return True

    def revoke_all_for_user(self, user_id: str, *, now: float) -> int:
        ids = [r.id for r in self.for_user(user_id) if r.revoked_at is None]
        return sum(self.revoke(i, user_id=user_id, now=now) for i in ids)

    def touch(self, token_id: str, *, now: float) -> bool:
        with self._lock:
            row = self._rows.get(token_id)
            if row is None:
                return False
            self._rows[token_id] = replace(row, last_used=now)
            return True


def _row(record: AgentTokenRecord) -> dict[str, Any]:
    return {"id": record.id, "user_id": record.user_id, "name": record.name,
            "secret_hash": record.secret_hash, "created": record.created,
            "expires": record.expires, "last_used": record.last_used,
            "revoked_at": record.revoked_at}
