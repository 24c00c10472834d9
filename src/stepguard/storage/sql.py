"""`SqlStore`: every storage role on one SQLAlchemy engine (SQLite or PostgreSQL).

Tables come from the Alembic migrations (`stepguard.storage.migrate.upgrade`), never from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stepguard.compiled import twin
from stepguard.core.throttle import ThrottleSettings
from stepguard.storage import version_board
from stepguard.storage.agent_tokens import SqlAgentTokens
from stepguard.storage.engine import make_engine
from stepguard.storage.session_states import SqlSessionStates
from stepguard.storage.sql_api_keys import SqlApiKeys
from stepguard.storage.sql_base import Database
from stepguard.storage.sql_challenges import SqlChallenges
from stepguard.storage.sql_factors import SqlFactors
from stepguard.storage.sql_grants import SqlGrants
from stepguard.storage.sql_history import SqlHistory
from stepguard.storage.sql_identities import SqlIdentities
from stepguard.storage.sql_pushes import SqlPushes
from stepguard.storage.sql_sessions import SqlSessions
from stepguard.storage.sql_throttle import SqlThrottle
from stepguard.storage.sql_users import SqlUsers
from stepguard.storage.version_board import VersionBoard

PING_TIMEOUT_MS = 2000


class SqlStore:
    """One object holding every role: `store.users`, `store.sessions`, ... (see `interfaces`)."""

    def __init__(self, engine: Engine, *, throttle: ThrottleSettings | None = None) -> None:
        self.version_board = _board_for(engine)
        self._db = Database(engine, self.version_board)
        self.users = SqlUsers(self._db)
        self.factors = SqlFactors(self._db)
        self.sessions = SqlSessions(self._db)
        self.challenges = SqlChallenges(self._db)
        self.pushes = SqlPushes(self._db)
        self.grants = SqlGrants(self._db)
        self.throttle = SqlThrottle(self._db, throttle or ThrottleSettings())
        self.history = SqlHistory(self._db)
        self.api_keys = SqlApiKeys(self._db)
        self.identities = SqlIdentities(self._db)
        self.agent_tokens = SqlAgentTokens(self._db)
        self.session_states = SqlSessionStates(engine)

    @classmethod
    def from_url(
        cls, url: str, *, throttle: ThrottleSettings | None = None, connect_timeout: float = 5.0
    ) -> SqlStore:
        return cls(make_engine(url, connect_timeout=connect_timeout), throttle=throttle)

    @property
    def engine(self) -> Engine:
        return self._db.engine

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run several role calls (in this thread or task) in one transaction: all or nothing."""
        with self._db.write():
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run several reads in one read transaction (one connection, one consistent snapshot)."""
        with self._db.read():
            yield

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers a trivial query promptly."""
        with self._db.read() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SET LOCAL statement_timeout = {PING_TIMEOUT_MS}"))
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.session_states.close()
        self._db.engine.dispose()
        if self.version_board is not None:
            self.version_board.close()


def _board_for(engine: Engine) -> VersionBoard | None:
    """SQLite: the board beside the database file (one per process for an in-memory one).
    PostgreSQL: none — a fleet spans hosts, so each decision reads its versions."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    board: type[VersionBoard] = twin(version_board).VersionBoard  # compiled when built
    if not database or database == ":memory:" or database.startswith("file:"):
        return board(None)
    return board.beside(Path(database).resolve())
