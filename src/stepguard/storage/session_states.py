"""What a decision needs about one session token, in one statement on a dedicated connection.

`SqlSessionStates.read(token_hash, known=...)` answers with one statement per case (one round
trip on PostgreSQL, a few microseconds on SQLite):

* a cached copy (`known` versions): a three-column indexed read of the session's and its user's
  cache versions and last-seen time (`_VERSIONS`); only if they moved, a second statement loads;
* no copy: one statement (`_POSTGRES` / `_SQLITE`) that returns the versions and everything
  else — the session with its events, the user, the risk history and the active grants — as one
  JSON document, a single consistent snapshot without a transaction.

(The load statement could serve hits too — its heavy part sits in a CASE on the versions — but
planning it costs PostgreSQL about 50 µs more per request than the small read; measured by
bench/invalidation.py.)

Each thread keeps one connection in autocommit mode (outside the pool, so it never starves other
work; no ORM, no SQLAlchemy, no pool checkout): on PostgreSQL both statements are prepared once
per connection and run through libpq (`pg_statements`, one round trip, ~16 µs of client CPU
instead of ~105 µs through a psycopg cursor); on SQLite they run on a plain `sqlite3`
connection. Any driver error closes the connection and raises `StoreUnavailable`, so callers
fail closed; the next call reconnects.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

from stepguard.core.context import AuthEvent
from stepguard.core.errors import StoreUnavailable
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.storage.pg_statements import PreparedConnection, Row
from stepguard.storage.records import SessionRecord, SessionSnapshot, UserRecord, Versions
from stepguard.storage.sql_history import history_from_document
from stepguard.storage.version_batches import VersionBatches

RETRY_AFTER = 5.0  # seconds during which a non-waiting caller does not reconnect
UNKNOWN = (-1, -1)  # versions no row has: ask for everything

_VERSIONS = """
SELECT s.version, u.version, s.last_seen
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = {key} AND s.revoked_at IS NULL
"""

# Parameters: $1 token hash, $2 and $3 the known session and user versions, $4 now.
_POSTGRES = """
SELECT s.version, u.version, s.last_seen,
  CASE WHEN s.version <> $2::bigint OR u.version <> $3::bigint THEN json_build_array(
    s.id, s.user_id, s.created, s.ip, s.user_agent, s.device_id,
    u.username, u.display_name, u.email, u.groups, u.disabled, u.created,
    (SELECT h.data FROM risk_history h WHERE h.user_id = s.user_id),
    (SELECT coalesce(json_agg(json_build_array(e.factor, e.amr, e.level, e.at) ORDER BY e.id),
                     '[]') FROM session_events e WHERE e.session_id = s.id),
    (SELECT coalesce(json_agg(json_build_array(g.id, g.scope, g.level, g.amr, g.granted_at,
                     g.expires_at, g.single_use, g.binding, g.factor)
                     ORDER BY g.granted_at, g.id), '[]')
       FROM grants g
      WHERE g.session_id = s.id AND g.consumed_at IS NULL AND g.expires_at > $4::float8)
  )::text END
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = $1::text AND s.revoked_at IS NULL
"""

# SQLite's JSON functions print reals with 15 digits: times travel as quote() text (exact).
_SQLITE = """
SELECT s.version, u.version, s.last_seen,
  CASE WHEN s.version <> :sv OR u.version <> :uv THEN json_array(
    s.id, s.user_id, quote(s.created), s.ip, s.user_agent, s.device_id,
    u.username, u.display_name, u.email, u.groups, u.disabled, quote(u.created),
    (SELECT h.data FROM risk_history h WHERE h.user_id = s.user_id),
    (SELECT json_group_array(json_array(factor, amr, level, quote(at)))
       FROM (SELECT * FROM session_events e WHERE e.session_id = s.id ORDER BY e.id)),
    (SELECT json_group_array(json_array(id, scope, level, amr, quote(granted_at),
                             quote(expires_at), single_use, binding, factor))
       FROM (SELECT * FROM grants g
              WHERE g.session_id = s.id AND g.consumed_at IS NULL AND g.expires_at > ?4
              ORDER BY g.granted_at, g.id))
  ) END
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = ?1 AND s.revoked_at IS NULL
"""

_STATEMENTS = {
    "postgresql": {"stepguard_versions": _VERSIONS.format(key="$1::text"),
                   "stepguard_load": _POSTGRES},
    "sqlite": {"stepguard_versions": _VERSIONS.format(key="?1"),
               "stepguard_load": _SQLITE},
}


class SqlSessionStates:
    """The `SessionStates` role on SQL (see `interfaces`)."""

    def __init__(self, engine: Engine, *, timeout: float = 5.0) -> None:
        self.engine = engine
        self.timeout = timeout
        self._postgres = engine.dialect.name != "sqlite"
        self._statements = _STATEMENTS["postgresql" if self._postgres else "sqlite"]
        self._local = threading.local()
        self._all: list[Any] = []
        self._failed_at = -RETRY_AFTER
        self._lock = threading.Lock()
        # PostgreSQL: the versions read awaited on the event loop, in batches (`version_batches`)
        self.batches = VersionBatches(self._postgres_driver, timeout=timeout) if (
            self._postgres) else None

    def read(self, token_hash: str, *, known: tuple[int, int] = UNKNOWN, now: float,
             connect: bool = True) -> Versions | SessionSnapshot | None:
        """None when no live session has this token; its `Versions` when they equal `known`;
        otherwise a full `SessionSnapshot`. With `connect=False` (an event loop that must not
        wait), a thread without a connection opens one only if no attempt failed in the last
        `RETRY_AFTER` seconds, and raises `StoreUnavailable` instead of waiting on a store known
        to be down."""
        if known != UNKNOWN:
            row = self._fetch("stepguard_versions", (token_hash,), connect=connect)
            if row is None:
                return None
            versions = Versions(session=int(row[0]), user=int(row[1]), last_seen=float(row[2]))
            if versions.pair == known:
                return versions
        row = self._fetch("stepguard_load", (token_hash, known[0], known[1], now),
                          connect=connect)
        if row is None:
            return None
        versions = Versions(session=int(row[0]), user=int(row[1]), last_seen=float(row[2]))
        if row[3] is None:  # the versions went back to `known` (cannot happen: they only grow)
            return versions
        return _snapshot(token_hash, versions, json.loads(row[3]))

    def _fetch(self, name: str, params: tuple[Any, ...], *, connect: bool) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if not connect and time.monotonic() - self._failed_at < RETRY_AFTER:
                raise StoreUnavailable("the store is unavailable")
            connection = self._connect()
        try:
            return connection.row(name, params)
        except Exception as error:  # any driver failure: drop the connection, fail closed
            self._failed_at = time.monotonic()
            self._drop(connection)
            raise StoreUnavailable("the store is unavailable") from error

    def _connect(self) -> Any:
        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self.engine.url)
        try:
            if self._postgres:
                connection: Any = _PostgresReads(self._postgres_driver(), self._statements)
            else:
                kwargs.update(timeout=self.timeout, check_same_thread=False, isolation_level=None)
                driver = dialect.loaded_dbapi.connect(*args, **kwargs)
                driver.execute("PRAGMA busy_timeout=10000")
                connection = _SqliteReads(driver, self._statements)
        except Exception as error:
            self._failed_at = time.monotonic()
            raise StoreUnavailable("the store is unavailable") from error
        self._local.connection = connection
        with self._lock:
            self._all.append(connection)
        return connection

    def _postgres_driver(self) -> Any:
        """A new autocommit psycopg connection to the engine's database (outside its pool)."""
        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self.engine.url)
        kwargs.setdefault("connect_timeout", max(1, int(self.timeout)))
        driver = dialect.loaded_dbapi.connect(*args, **kwargs)
        driver.autocommit = True
        return driver

    def _drop(self, connection: Any) -> None:
        self._local.connection = None
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)
        connection.close()

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()
        if self.batches is not None:
            self.batches.close()


class _PostgresReads(PreparedConnection):
    """The two statements prepared on a held connection; parameters sent as text."""

    def row(self, name: str, params: Sequence[Any]) -> Row | None:
        return super().row(name, [_text(value) for value in params])


def _text(value: str | int | float) -> bytes:
    # repr: the shortest text that reads back as the same float (exact, as float8 input)
    return (value if isinstance(value, str) else repr(value)).encode()


class _SqliteReads:
    """The two statements on a plain `sqlite3` connection (numbered `?n` parameters)."""

    def __init__(self, connection: Any, statements: dict[str, str]) -> None:
        self.connection = connection
        self._statements = statements

    def row(self, name: str, params: Sequence[Any]) -> Any:
        cursor = self.connection.execute(self._statements[name], params)
        row = cursor.fetchone()
        cursor.close()
        return row

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already broken; closing is best effort
            self.connection.close()


def _snapshot(token_hash: str, versions: Versions, doc: list[Any]) -> SessionSnapshot:
    (session_id, user_id, created, ip, user_agent, device_id, username, display_name, email,
     groups, disabled, user_created, history, events, grants) = doc
    if isinstance(events, str):  # SQLite nests aggregated JSON as text
        events, grants = json.loads(events), json.loads(grants)
    record = SessionRecord(
        id=session_id, token_hash=token_hash, user_id=user_id, created=float(created),
        last_seen=versions.last_seen, ip=ip, user_agent=user_agent, device_id=device_id,
        events=tuple(AuthEvent(factor=f, amr=tuple(json.loads(amr)), level=Level(level),
                               at=float(at)) for f, amr, level, at in events),
    )
    user = UserRecord(
        id=user_id, username=username, display_name=display_name, email=email,
        groups=frozenset(json.loads(groups)), disabled=bool(disabled), created=float(user_created),
    )
    return SessionSnapshot(
        record=record, user=user, versions=versions,
        history=history_from_document(None if history is None else json.loads(history)),
        grants=tuple(
            Grant(id=g_id, subject_id=user_id, session_id=session_id, scope=scope,
                  level=Level(level), amr=tuple(json.loads(amr)), granted_at=float(granted),
                  expires_at=float(expires), single_use=bool(single), binding=binding,
                  factor=factor)
            for g_id, scope, level, amr, granted, expires, single, binding, factor in grants),
    )
