"""Prepared statements on one held PostgreSQL connection, run at the libpq level.

The decision's per-request read (`session_states`) is one small statement. Through a psycopg
cursor it cost about 105 µs of client CPU per call on this project's 2-core benchmark machine
(query conversion, parameter dumping, the prepare manager, the generator-driven wait loop, row
building); the same statement run with `PQexecPrepared` on the connection's `pq.PGconn` costs
about 16 µs (`bench/invalidation.py` prints both). So this layer does only that: each statement
is prepared once per connection under a fixed name; a call sends its parameters as text,
blocks in libpq with the GIL released, and hands back the first row's fields as text bytes
(`int()` and `float()` read them exactly: PostgreSQL prints the shortest float8 text that
reads back to the same value). No transaction is ever open (autocommit), so every call sees
everything committed before it started.

Any failure — a broken connection, an error result — raises; the caller drops the connection
and fails closed (`StoreUnavailable`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import pq

Row = tuple[bytes | None, ...]


class StatementFailed(Exception):
    """A prepared statement could not be prepared or run (the connection is to be dropped)."""


class PreparedConnection:
    """One autocommit psycopg connection with `statements` (name → SQL with `$n` parameters)
    prepared on it."""

    def __init__(self, connection: Any, statements: Mapping[str, str]) -> None:
        self.connection = connection
        self._pg: pq.abc.PGconn = connection.pgconn
        self._names = {name: name.encode() for name in statements}
        for name, sql in statements.items():
            self._check(self._pg.prepare(self._names[name], sql.encode(), None),
                        pq.ExecStatus.COMMAND_OK)

    def row(self, name: str, params: Sequence[bytes]) -> Row | None:
        """The first row of the named statement's result as text fields, or None (no row)."""
        result = self._check(self._pg.exec_prepared(self._names[name], params, None, 0),
                             pq.ExecStatus.TUPLES_OK)
        if result.ntuples == 0:
            return None
        return tuple(result.get_value(0, column) for column in range(result.nfields))

    def _check(self, result: pq.abc.PGresult, wanted: pq.ExecStatus) -> pq.abc.PGresult:
        if result.status != wanted:
            message = result.error_message or self._pg.error_message
            raise StatementFailed(message.decode("utf-8", "replace").strip())
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection is best effort
            self.connection.close()
