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

Each thread keeps one DB-API connection in autocommit mode (outside the pool, so it never starves
other work; plain driver calls, no ORM and no pool checkout). Any driver error closes the
connection and raises `StoreUnavailable`, so callers fail closed; the next call reconnects.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine

from stepguard.core.context import AuthEvent
from stepguard.core.errors import StoreUnavailable
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.storage.records import SessionRecord, SessionSnapshot, UserRecord, Versions
from stepguard.storage.sql_history import history_from_document

RETRY_AFTER = 5.0  # seconds during which a non-waiting caller does not reconnect
UNKNOWN = (-1, -1)  # versions no row has: ask for everything

_VERSIONS = """
SELECT s.version, u.version, s.last_seen
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = {token_hash} AND s.revoked_at IS NULL
"""

_POSTGRES = """
SELECT s.version, u.version, s.last_seen,
  CASE WHEN s.version <> %(sv)s OR u.version <> %(uv)s THEN json_build_array(
    s.id, s.user_id, s.created, s.ip, s.user_agent, s.device_id,
    u.username, u.display_name, u.email, u.groups, u.disabled, u.created,
    (SELECT h.data FROM risk_history h WHERE h.user_id = s.user_id),
    (SELECT coalesce(json_agg(json_build_array(e.factor, e.amr, e.level, e.at) ORDER BY e.id),
                     '[]') FROM session_events e WHERE e.session_id = s.id),
    (SELECT coalesce(json_agg(json_build_array(g.id, g.scope, g.level, g.amr, g.granted_at,
                     g.expires_at, g.single_use, g.binding, g.factor)
                     ORDER BY g.granted_at, g.id), '[]')
       FROM grants g
      WHERE g.session_id = s.id AND g.consumed_at IS NULL AND g.expires_at > %(now)s)
  )::text END
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = %(token_hash)s AND s.revoked_at IS NULL
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
              WHERE g.session_id = s.id AND g.consumed_at IS NULL AND g.expires_at > :now
              ORDER BY g.granted_at, g.id))
  ) END
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = :token_hash AND s.revoked_at IS NULL
"""


class SqlSessionStates:
    """The `SessionStates` role on SQL (see `interfaces`)."""

    def __init__(self, engine: Engine, *, timeout: float = 5.0) -> None:
        self.engine = engine
        self.timeout = timeout
        sqlite = engine.dialect.name == "sqlite"
        self._sql = _SQLITE if sqlite else _POSTGRES
        self._versions = _VERSIONS.format(token_hash=":token_hash" if sqlite else "%(token_hash)s")
        self._local = threading.local()
        self._all: list[Any] = []
        self._failed_at = -RETRY_AFTER
        self._lock = threading.Lock()

    def read(self, token_hash: str, *, known: tuple[int, int] = UNKNOWN, now: float,
             connect: bool = True) -> Versions | SessionSnapshot | None:
        """None when no live session has this token; its `Versions` when they equal `known`;
        otherwise a full `SessionSnapshot`. With `connect=False` (an event loop that must not
        wait), a thread without a connection opens one only if no attempt failed in the last
        `RETRY_AFTER` seconds, and raises `StoreUnavailable` instead of waiting on a store known
        to be down."""
        if known != UNKNOWN:
            row = self._fetch(self._versions, {"token_hash": token_hash}, connect=connect)
            if row is None:
                return None
            versions = Versions(session=int(row[0]), user=int(row[1]), last_seen=float(row[2]))
            if versions.pair == known:
                return versions
        params = {"token_hash": token_hash, "sv": known[0], "uv": known[1], "now": now}
        row = self._fetch(self._sql, params, connect=connect)
        if row is None:
            return None
        versions = Versions(session=int(row[0]), user=int(row[1]), last_seen=float(row[2]))
        if row[3] is None:  # the versions went back to `known` (cannot happen: they only grow)
            return versions
        return _snapshot(token_hash, versions, json.loads(row[3]))

    def _fetch(self, sql: str, params: dict[str, Any], *, connect: bool) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if not connect and time.monotonic() - self._failed_at < RETRY_AFTER:
                raise StoreUnavailable("the store is unavailable")
            connection = self._connect()
        try:
            cursor = connection.cursor()
            cursor.execute(sql, params)
            row = cursor.fetchone()
            cursor.close()
        except Exception as error:  # any driver failure: drop the connection, fail closed
            self._failed_at = time.monotonic()
            self._drop(connection)
            raise StoreUnavailable("the store is unavailable") from error
        return row

    def _connect(self) -> Any:
        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self.engine.url)
        try:
            if dialect.name == "sqlite":
                kwargs.update(timeout=self.timeout, check_same_thread=False, isolation_level=None)
                connection = dialect.loaded_dbapi.connect(*args, **kwargs)
                connection.execute("PRAGMA busy_timeout=10000")
            else:
                kwargs.setdefault("connect_timeout", max(1, int(self.timeout)))
                connection = dialect.loaded_dbapi.connect(*args, **kwargs)
                connection.autocommit = True
        except Exception as error:
            self._failed_at = time.monotonic()
            raise StoreUnavailable("the store is unavailable") from error
        self._local.connection = connection
        with self._lock:
            self._all.append(connection)
        return connection

    def _drop(self, connection: Any) -> None:
        self._local.connection = None
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)
        with contextlib.suppress(Exception):  # already broken; closing is best effort
            connection.close()

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()


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
