"""Aggregates over the audit ledger for reports and the dashboard, computed by the database
(GROUP BY over the `at` range through the (at, seq) index), never by reading every entry.

A plain-allow summary counts as the requests it summarises (`detail.count`, read with the
dialect's JSON function); every other entry counts as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ColumnElement

from stepguard.storage.audit_tables import audit_entries as t
from stepguard.storage.sql_base import READ_ONLY, unavailable_on_driver_error


@dataclass(frozen=True, slots=True)
class Tally:
    kind: str
    decision: str
    outcome: str
    factor: str
    rule: str
    entries: int
    requests: int


class AuditStats:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    def tallies(self, *, since: float, until: float) -> list[Tally]:
        """Entries and requests per (kind, decision, outcome, factor, rule) in [since, until)."""
        requests = func.sum(self._requests())
        query = (select(t.c.kind, t.c.decision, t.c.outcome, t.c.factor, t.c.rule,
                        func.count(), requests)
                 .where(t.c.at >= since, t.c.at < until)
                 .group_by(t.c.kind, t.c.decision, t.c.outcome, t.c.factor, t.c.rule))
        return [Tally(str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]),
                      int(row[5]), int(row[6] or 0)) for row in self._run(query)]

    def timeline(self, *, since: float, until: float,
                 bucket: float) -> list[tuple[float, str, int]]:
        """(bucket start, decision, requests) of decision entries, by time bucket."""
        start = self._bucket(bucket)
        query = (select(start, t.c.decision, func.sum(self._requests()))
                 .where(t.c.kind == "decision", t.c.at >= since, t.c.at < until)
                 .group_by(start, t.c.decision).order_by(start))
        return [(float(row[0]) * bucket, str(row[1]), int(row[2] or 0))
                for row in self._run(query)]

    def pseudonymised(self, *, since: float, until: float) -> tuple[int, int]:
        """(entries naming a client IP, of which pseudonymised) in the period."""
        fields = t.c.fields
        named = fields.like('%"client_ip":"%')
        hidden = fields.like('%"client_ip":"ip:%')
        query = select(func.sum(case((named, 1), else_=0)),
                       func.sum(case((hidden, 1), else_=0))).where(t.c.at >= since,
                                                                    t.c.at < until)
        row = self._run(query)[0]
        return int(row[0] or 0), int(row[1] or 0)

    def _requests(self) -> ColumnElement[Any]:
        if self._postgres:
            count = cast(cast(t.c.fields, JSONB)["detail"]["count"].astext, Integer)
        else:
            count = cast(func.json_extract(t.c.fields, "$.detail.count"), Integer)
        return case((t.c.outcome == "allow_summary", func.coalesce(count, 1)), else_=1)

    def _bucket(self, bucket: float) -> ColumnElement[Any]:
        if self._postgres:
            return func.floor(t.c.at / bucket)
        return cast(t.c.at / bucket, Integer)  # SQLite truncates; times are positive

    def _run(self, query: Any) -> list[Any]:
        with unavailable_on_driver_error(), self._engine.connect() as connection:
            connection = connection.execution_options(**{READ_ONLY: True})
            return list(connection.execute(query))
