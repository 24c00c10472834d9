"""Throttle counters in SQL: one atomic upsert per failure, shared by every instance."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from stepguard.service.throttle import ThrottleSettings, forget_before, state_after
from stepguard.storage import tables as t
from stepguard.storage.records import ThrottleState
from stepguard.storage.sql_base import Database

_T = t.throttle.c
_NEVER = float("-inf")


class SqlThrottle:
    """Counts consecutive failures per key; the back-off comes from `service.throttle`."""

    def __init__(self, db: Database, settings: ThrottleSettings) -> None:
        self._db = db
        self._settings = settings

    def record_failure(self, key: str, *, now: float) -> ThrottleState:
        """Count one failure under `key` at `now` and lock the key for the back-off delay."""
        with self._db.write() as connection:
            consecutive = _increment(connection, key, now=now, forget=self._forget(key, now))
            state = state_after(key, consecutive, now=now, settings=self._settings)
            connection.execute(
                update(t.throttle)
                .where(_T.key == key)
                .values(locked_until=state.locked_until, hard_locked=state.hard_locked)
            )
        return state

    def state(self, key: str, *, now: float) -> ThrottleState:
        with self._db.read() as connection:
            row = connection.execute(select(t.throttle).where(_T.key == key)).first()
        if row is None or row.last_failure < self._forget(key, now):
            return ThrottleState()
        return ThrottleState(
            consecutive=row.consecutive,
            locked_until=row.locked_until,
            hard_locked=bool(row.hard_locked),
        )

    def reset(self, key: str) -> None:
        with self._db.write() as connection:
            connection.execute(delete(t.throttle).where(_T.key == key))

    def _forget(self, key: str, now: float) -> float:
        before = forget_before(key, now=now, settings=self._settings)
        return _NEVER if before is None else before


def _increment(connection: Connection, key: str, *, now: float, forget: float) -> int:
    """INSERT ... ON CONFLICT DO UPDATE ... RETURNING: one statement, safe under concurrency."""
    dialect: Any = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(t.throttle).values(
        key=key, consecutive=1, locked_until=0.0, hard_locked=False, last_failure=now
    )
    restart = case((_T.last_failure < forget, 1), else_=_T.consecutive + 1)
    statement = statement.on_conflict_do_update(
        index_elements=[_T.key], set_={"consecutive": restart, "last_failure": now}
    ).returning(_T.consecutive)
    return int(connection.execute(statement).scalar_one())
