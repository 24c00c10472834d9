"""A fast reader of the store epoch (see `tables.store_epoch`), asked once per decision.

Each thread keeps one dedicated DB-API connection in autocommit mode (outside the pool, so it
never starves other work) and runs a single primary-key SELECT: a few microseconds on SQLite, one
round trip on PostgreSQL. Any driver error closes the connection and raises `StoreUnavailable`,
so callers fail closed; the next call reconnects.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine

from stepguard.core.errors import StoreUnavailable

QUERY = "SELECT value FROM store_epoch WHERE id = 1"
RETRY_AFTER = 5.0  # seconds during which a non-waiting caller does not reconnect


class EpochReader:
    def __init__(self, engine: Engine, *, timeout: float = 5.0) -> None:
        self.engine = engine
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[Any] = []
        self._failed_at = -RETRY_AFTER
        self._lock = threading.Lock()

    def read(self, *, connect: bool = True) -> int | None:
        """The epoch. With `connect=False` (callers that must not wait, like an event loop), a
        thread without a connection opens one only if no attempt failed in the last
        `RETRY_AFTER` seconds, and gets None instead of waiting on a store known to be down."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if not connect and time.monotonic() - self._failed_at < RETRY_AFTER:
                return None
            connection = self._connect()
        try:
            cursor = connection.cursor()
            cursor.execute(QUERY)
            row = cursor.fetchone()
            cursor.close()
        except Exception as error:  # any driver failure: drop the connection, fail closed
            self._failed_at = time.monotonic()
            self._drop(connection)
            raise StoreUnavailable("the store is unavailable") from error
        return int(row[0]) if row else 0

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
