"""The per-request versions read on PostgreSQL, awaited on the event loop and shared by batches.

`SessionStates.read` blocks its thread for a round trip; on the event loop that stalls every
other request of the instance while PostgreSQL answers (under load, while it waits for a CPU).
`VersionBatches.read(token_hash)` instead queues the token and awaits: one prepared statement
(`WHERE token_hash = ANY($1)`) is sent for every token queued since the last one was sent, on a
non-blocking libpq connection watched by the loop, and each waiting request gets its own row.

Why this keeps SECURITY.md case 12 exactly: a request's token joins only a statement sent
*after* the request queued it (a request that arrives while a statement is in flight waits for
the next one), so each answer comes from a statement that started after the request did, in
autocommit — it sees every change committed before, as the single read did. Any failure (a
broken connection, an error result, no answer within `timeout` of the statement being sent —
one timer per statement; the store URL's `statement_timeout` also bounds it on the server)
fails every waiting request with `StoreUnavailable` and drops the connection; the loop
reconnects on a later batch unless a connection failed in the last `RETRY_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from psycopg import pq

from stepguard.core.errors import StoreUnavailable
from stepguard.storage.pg_statements import PreparedConnection
from stepguard.storage.records import Versions

RETRY_AFTER = 5.0  # seconds after a failed connection during which the loop does not reconnect
NAME = "stepguard_versions_many"
_VERSIONS_MANY = """
SELECT s.token_hash, s.version, u.version, s.last_seen
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = ANY($1::text[]) AND s.revoked_at IS NULL
"""


class VersionBatches:
    """Batched versions reads on one connection owned by one event loop."""

    def __init__(self, connect: Any, *, timeout: float = 5.0) -> None:
        """`connect()` returns a new autocommit psycopg connection (blocking)."""
        self._connect = connect
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: PreparedConnection | None = None
        self._fd = -1  # the connection's socket, as the loop watches it
        self._queued: dict[str, list[asyncio.Future[Versions | None]]] = {}
        self._sent: dict[str, list[asyncio.Future[Versions | None]]] = {}
        self._scheduled = False
        self._deadline: asyncio.TimerHandle | None = None  # the sent statement's timeout
        self._failed_at = -RETRY_AFTER
        self.statements = 0  # statements sent (a test reads how requests were batched)

    async def read(self, token_hash: str) -> Versions | None:
        """The session's and user's versions and last-seen time, or None (no live session)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): start afresh on it
            if self._loop is not None and self._loop.is_running():
                # another thread's live loop owns it: that caller takes the thread path
                raise StoreUnavailable("the batched read belongs to another event loop")
            self._reset(StoreUnavailable("the event loop changed"))
            self._loop = loop
        future: asyncio.Future[Versions | None] = loop.create_future()
        self._queued.setdefault(token_hash, []).append(future)
        if not self._sent and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send)  # let the requests ready in this turn join the batch
        return await future  # `_send` arms one timer per statement (no task per request)

    def _send(self) -> None:
        self._scheduled = False
        if self._sent or not self._queued:
            return
        batch, self._queued = self._queued, {}
        try:
            connection = self._connection or self._open()
            pg = connection.connection.pgconn
            keys = "{" + ",".join(_quoted(key) for key in batch) + "}"
            pg.send_query_prepared(NAME.encode(), [keys.encode()], None, 0)
            while pg.flush():  # a small statement: written at once but on a full socket buffer
                pass
        except Exception as error:
            self._fail(batch, error)
            return
        self._sent = batch
        self.statements += 1
        assert self._loop is not None
        self._deadline = self._loop.call_later(self.timeout, self._reset,
                                               StoreUnavailable("no answer in time"))

    def _open(self) -> PreparedConnection:
        if time.monotonic() - self._failed_at < RETRY_AFTER:
            raise StoreUnavailable("the store is unavailable")
        try:
            # the store URL's `statement_timeout` bounds the PREPARE (a blocking call) too
            connection = PreparedConnection(self._connect(), {NAME: _VERSIONS_MANY})
            pg = connection.connection.pgconn
            pg.nonblocking = 1
            assert self._loop is not None
            self._loop.add_reader(pg.socket, self._readable)
            self._fd = pg.socket
        except Exception:
            self._failed_at = time.monotonic()
            raise
        self._connection = connection
        return connection

    def _readable(self) -> None:
        connection = self._connection
        if connection is None:
            return
        pg = connection.connection.pgconn
        try:
            pg.consume_input()
            if pg.is_busy():
                return
            rows: dict[str, Versions] = {}
            failed = None
            while (result := pg.get_result()) is not None:
                if result.status != pq.ExecStatus.TUPLES_OK:
                    failed = (result.error_message or pg.error_message).decode("utf-8", "replace")
                    continue
                for row in range(result.ntuples):
                    key, session, user, seen = (result.get_value(row, c) for c in range(4))
                    rows[bytes(key or b"").decode()] = Versions(
                        session=int(session or b""), user=int(user or b""),
                        last_seen=float(seen or b""))
            if failed is not None:
                raise StoreUnavailable(failed)
        except Exception as error:
            self._reset(error)
            return
        batch, self._sent = self._sent, {}
        self._disarm()
        for key, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(rows.get(key))
        if self._queued and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _fail(self, batch: dict[str, list[asyncio.Future[Versions | None]]],
              error: BaseException) -> None:
        for futures in batch.values():
            for future in futures:
                if not future.done():
                    future.set_exception(StoreUnavailable("the store is unavailable"))
                    future.exception()  # retrieved: a request that timed out logs nothing
        del error

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _reset(self, error: BaseException) -> None:
        """Drop the connection and fail every request waiting on it (sent or queued)."""
        self._disarm()
        connection, self._connection = self._connection, None
        if connection is not None:
            self._failed_at = time.monotonic()
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):  # a closed loop watches nothing
                    self._loop.remove_reader(self._fd)
            connection.close()
        sent, self._sent = self._sent, {}
        queued, self._queued = self._queued, {}
        self._fail(sent, error)
        self._fail(queued, error)

    def close(self) -> None:
        self._reset(StoreUnavailable("closed"))


def _quoted(key: str) -> str:
    """One element of a text array literal (token hashes are hex; quoted whatever they are)."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
