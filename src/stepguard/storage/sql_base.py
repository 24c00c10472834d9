"""One engine, one transaction per operation (or per `Store.transaction()`), driver errors mapped.

Every role method runs inside `Database.write()` or `Database.read()`. When a caller has opened
`Store.transaction()`, every role method in the same thread (or task) joins that one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import bindparam, exc, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from stepguard.core.errors import StoreUnavailable
from stepguard.storage import tables
from stepguard.storage.version_board import VersionBoard

READ_ONLY = "stepguard_read_only"  # execution option: SQLite may BEGIN DEFERRED (no write lock)

_UNAVAILABLE = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
)


class Database:
    """The engine plus the transaction the current context has open, if any."""

    def __init__(self, engine: Engine, board: VersionBoard | None = None) -> None:
        self.engine = engine
        self.board = board  # told of every version change around its commit (`version_board`)
        self._current: ContextVar[Connection | None] = ContextVar(
            f"stepguard_store_{id(self)}", default=None
        )

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection inside a transaction that commits on success and rolls back on error."""
        with self._transaction(read_only=False) as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """Like `write`, but may skip the write lock when no transaction is open yet."""
        with self._transaction(read_only=True) as connection:
            yield connection

    @contextmanager
    def _transaction(self, *, read_only: bool) -> Iterator[Connection]:
        current = self._current.get()
        if current is not None:
            yield current
            return
        with unavailable_on_driver_error(), self.engine.connect() as connection:
            if read_only:
                connection = connection.execution_options(**{READ_ONLY: True})
            with ExitStack() as after_commit, connection.begin():
                token = self._current.set(connection)
                try:
                    yield connection
                    changed = _apply_bumps(connection)  # last, so no lock cycle can form
                    if self.board is not None and changed:
                        after_commit.enter_context(self.board.writing(changed))
                finally:
                    self._current.reset(token)
                    connection.info.pop(_BUMPS_KEY, None)


@contextmanager
def unavailable_on_driver_error() -> Iterator[None]:
    """Turn connection-level driver failures into `StoreUnavailable` so callers fail closed."""
    try:
        yield
    except _UNAVAILABLE as error:
        raise StoreUnavailable("the store is unavailable") from error


def per_dialect(build: Callable[[Any], Any]) -> dict[str, Any]:
    """A statement with dialect-specific syntax (`INSERT ... ON CONFLICT`), built once for
    each store dialect from its module (`sqlalchemy.dialects.postgresql` / `.sqlite`)."""
    return {"postgresql": build(postgresql), "sqlite": build(sqlite)}


def on_dialect(connection: Connection, built: dict[str, Any]) -> Any:
    """The `per_dialect` statement for this connection's database."""
    return built["postgresql" if connection.dialect.name == "postgresql" else "sqlite"]


def dumps(value: Any) -> str:
    """Compact, deterministic JSON text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(text: str) -> Any:
    return json.loads(text)


def is_conflict(error: exc.IntegrityError) -> bool:
    """Whether an integrity error is a duplicate key (as opposed to e.g. a missing parent row)."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate == "23505")
    return "UNIQUE constraint failed" in str(error.orig)


_BUMPS_KEY = "stepguard_version_bumps"


def bump_session(connection: Connection, session_id: str) -> None:
    """Mark a session's decision-relevant state as changed (see `tables`, cache versions)."""
    _bumps(connection)[1].add(session_id)


def bump_user(connection: Connection, user_id: str) -> None:
    """Mark a user's decision-relevant state as changed: every session of the user reloads."""
    _bumps(connection)[0].add(user_id)


def _bumps(connection: Connection) -> tuple[set[str], set[str]]:
    found: tuple[set[str], set[str]] = connection.info.setdefault(_BUMPS_KEY, (set(), set()))
    return found


def _apply_bumps(connection: Connection) -> set[str]:
    """Raise the marked versions as the transaction's last statements, users before sessions and
    each in sorted order: every transaction takes these row locks last and in one order, so no
    lock cycle (deadlock) can include them. The ids whose versions were raised."""
    users, sessions = _bumps(connection)
    connection.info.pop(_BUMPS_KEY, None)
    for statement, ids in ((_BUMP_USERS, users), (_BUMP_SESSIONS, sessions)):
        for chunk in _chunks(sorted(ids)):
            connection.execute(statement, {"ids": chunk})
    return users | sessions


def _bump(table: Any) -> Any:
    return (update(table).where(table.c.id.in_(bindparam("ids", expanding=True)))
            .values(version=table.c.version + 1))


_BUMP_USERS, _BUMP_SESSIONS = _bump(tables.users), _bump(tables.sessions)  # built once


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]
