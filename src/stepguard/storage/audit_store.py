"""The audit ledger in SQL (SQLite or PostgreSQL): one chain, however many writers.

Every append is one transaction that locks the chain head (`SELECT … FOR UPDATE` on PostgreSQL;
SQLite's `BEGIN IMMEDIATE` already serialises writers), seals the new entries onto the head's
hash, inserts them and moves the head. Driver failures become `StoreUnavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Row, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from stepguard.audit.ledger import (
    GENESIS_HASH,
    AuditEntry,
    AuditEvent,
    ChainHead,
    Checkpoint,
    entry_from_record,
    seal_chain,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint,
)
from stepguard.core.errors import AuditIntegrityError, VerificationFailed
from stepguard.storage.audit_tables import HEAD_ID, audit_checkpoints, audit_entries, audit_head
from stepguard.storage.sql_base import READ_ONLY, unavailable_on_driver_error


@dataclass(frozen=True, slots=True)
class LedgerState:
    """One consistent look at the ledger: its head, highest stored seq and entry count."""

    head: ChainHead
    last_seq: int
    count: int
    checkpoint_seq: int


class SqlAuditLog:
    """Append-only, hash-chained audit entries with filtered reads, pruning and checkpoints."""

    def __init__(self, engine: Engine, *, page_size: int = 500) -> None:
        self._engine = engine
        self._page_size = page_size

    # ------------------------------------------------------------------ writing

    def append(self, event: AuditEvent) -> AuditEntry:
        """Seal one event onto the chain and store it; return the stored entry."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        """Seal and store several events, in order, in one transaction."""
        if not events:
            return []
        try:
            return self._append(events)
        except _HeadMissing:
            self._create_head()
            return self._append(events)

    def _append(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        with self._write() as connection:
            head = _lock_head(connection)
            if head is None:
                raise _HeadMissing
            entries = seal_chain(events, after_seq=head.seq, prev_hash=head.hash)
            connection.execute(_INSERT_ENTRIES, [_row(entry) for entry in entries])
            _move_head(connection, entries[-1])
            return entries

    def _create_head(self) -> None:
        try:
            with unavailable_on_driver_error(), self._engine.begin() as connection:
                connection.execute(insert(audit_head).values(id=HEAD_ID, seq=0, hash=GENESIS_HASH))
        except IntegrityError:
            pass  # another writer created it first

    def prune(self, *, before_seq: int, signing_key: Ed25519PrivateKey) -> Checkpoint:
        """Delete entries before `before_seq` and store a signed checkpoint, in one transaction.

        The entries to be removed are verified first (from the previous checkpoint, whose
        signature must verify with this key); a broken chain is never signed over.
        """
        with self._write() as connection:
            head = _lock_head(connection) or ChainHead(0, GENESIS_HASH)
            previous = _latest_checkpoint(connection)
            start = previous.seq if previous else 0
            cut = before_seq - 1
            if not start < cut <= head.seq:
                raise ValueError(f"nothing to prune: entries {start + 1}–{head.seq} remain")
            if previous is not None:
                _check_signature(previous, signing_key)
            last = _verified_last(connection, previous, start, cut)
            checkpoint = sign_checkpoint(
                seq=cut,
                hash=last.hash,
                at=last.at,
                count_pruned=cut - start,
                signing_key=signing_key,
            )
            connection.execute(delete(audit_entries).where(audit_entries.c.seq <= cut))
            connection.execute(insert(audit_checkpoints).values(**_checkpoint_row(checkpoint)))
            return checkpoint

    # ------------------------------------------------------------------ reading

    def entries(
        self,
        *,
        after_seq: int = 0,
        until_seq: int | None = None,
        limit: int | None = None,
        subject: str | None = None,
        kind: str | None = None,
        rule: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Iterator[AuditEntry]:
        """Entries in seq order, read page by page (filters are for the admin page and
        replay; `since`/`until` bound the entry time, inclusive and exclusive)."""
        conditions = _filters(until_seq, subject, kind, rule, outcome)
        if since is not None or until is not None:
            conditions.extend(self._time_range(since, until))
        cursor, remaining = after_seq, limit
        while remaining is None or remaining > 0:
            size = self._page_size if remaining is None else min(self._page_size, remaining)
            page = self._page(cursor, conditions, size)
            yield from page
            if len(page) < size:
                return
            cursor = page[-1].seq
            remaining = None if remaining is None else remaining - len(page)

    def _time_range(self, since: float | None, until: float | None) -> list[ColumnElement[bool]]:
        """The time bounds, plus the seq range of the entries inside them (one read of the
        (at, seq) index), so each page is a seq-ordered index range and not a sort."""
        at = audit_entries.c.at
        bounds = [at >= since] if since is not None else []
        if until is not None:
            bounds.append(at < until)
        query = select(func.min(audit_entries.c.seq), func.max(audit_entries.c.seq)).where(*bounds)
        with self._read() as connection:
            low, high = connection.execute(query).one()
        if low is None:
            return [*bounds, audit_entries.c.seq < 0]  # nothing in the period
        return [*bounds, audit_entries.c.seq >= int(low), audit_entries.c.seq <= int(high)]

    def latest(self, *, before_seq: int | None = None, limit: int = 50,
               subject: str | None = None, kind: str | None = None, rule: str | None = None,
               outcome: str | None = None, since: float | None = None,
               until: float | None = None,
               exclude_outcomes: Sequence[str] = ()) -> list[AuditEntry]:
        """One page, newest first: at most `limit` entries before `before_seq` under the filters
        (a (filter, seq) index range read backwards; never the whole ledger)."""
        conditions = _filters(None, subject, kind, rule, outcome)
        if before_seq is not None:
            conditions.append(audit_entries.c.seq < before_seq)
        if exclude_outcomes:
            conditions.append(audit_entries.c.outcome.not_in(list(exclude_outcomes)))
        if since is not None or until is not None:
            conditions.extend(self._time_range(since, until))
        query = (select(audit_entries).where(*conditions)
                 .order_by(audit_entries.c.seq.desc()).limit(max(0, min(limit, 10_000))))
        with self._read() as connection:
            return [_entry(row) for row in connection.execute(query)]

    def count(self) -> int:
        """How many entries are stored (pruned ones not included)."""
        with self._read() as connection:
            return int(connection.execute(select(func.count()).select_from(audit_entries)).one()[0])

    def state(self) -> LedgerState:
        """Head, highest seq, count and latest checkpoint seq, read in one statement."""
        head = audit_head.c
        query = select(
            select(head.seq).where(head.id == HEAD_ID).scalar_subquery(),
            select(head.hash).where(head.id == HEAD_ID).scalar_subquery(),
            select(func.max(audit_entries.c.seq)).scalar_subquery(),
            select(func.count()).select_from(audit_entries).scalar_subquery(),
            select(func.max(audit_checkpoints.c.seq)).scalar_subquery(),
        )
        with self._read() as connection:
            seq, digest, last, count, checkpoint = connection.execute(query).one()
        return LedgerState(
            head=ChainHead(int(seq or 0), str(digest or GENESIS_HASH)),
            last_seq=int(last or 0),
            count=int(count or 0),
            checkpoint_seq=int(checkpoint or 0),
        )

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint left by the most recent prune, if any."""
        with self._read() as connection:
            return _latest_checkpoint(connection)

    # ------------------------------------------------------------------ plumbing

    def _page(
        self, after_seq: int, conditions: list[ColumnElement[bool]], size: int
    ) -> list[AuditEntry]:
        query = (
            select(audit_entries)
            .where(audit_entries.c.seq > after_seq, *conditions)
            .order_by(audit_entries.c.seq)
            .limit(size)
        )
        with self._read() as connection:
            return [_entry(row) for row in connection.execute(query)]

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with unavailable_on_driver_error(), self._engine.connect() as connection:
            try:
                with connection.begin():
                    yield connection
            except IntegrityError as error:
                raise AuditIntegrityError(
                    "the audit chain head is behind the stored entries"
                ) from error

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with unavailable_on_driver_error(), self._engine.connect() as connection:
            connection = connection.execution_options(**{READ_ONLY: True})
            with connection.begin():
                yield connection


class _HeadMissing(Exception):
    """The head row does not exist yet (a store created without the migration's seed row)."""


# Built once: every append runs these (building them per call cost about as much as running).
_HEAD = (select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID)
         .with_for_update())
_MOVE_HEAD = (update(audit_head).where(audit_head.c.id == HEAD_ID)
              .values(seq=bindparam("to_seq"), hash=bindparam("to_hash")))
_INSERT_ENTRIES = insert(audit_entries)


def _lock_head(connection: Connection) -> ChainHead | None:
    """The chain head, locked until the transaction ends; None if the row does not exist."""
    row = connection.execute(_HEAD).one_or_none()
    return None if row is None else ChainHead(int(row[0]), str(row[1]))


def _move_head(connection: Connection, last: AuditEntry) -> None:
    connection.execute(_MOVE_HEAD, {"to_seq": last.seq, "to_hash": last.hash})


def _verified_last(
    connection: Connection, previous: Checkpoint | None, start: int, cut: int
) -> AuditEntry:
    """The last entry to be pruned, after verifying every entry from `start` up to it."""
    query = (
        select(audit_entries)
        .where(audit_entries.c.seq > start, audit_entries.c.seq <= cut)
        .order_by(audit_entries.c.seq)
    )
    rows = connection.execute(query.execution_options(stream_results=True, yield_per=1000))
    seen: list[AuditEntry] = []

    def stream() -> Iterator[AuditEntry]:
        for row in rows:
            entry = _entry(row)
            seen[:] = [entry]
            yield entry

    report = verify_chain(stream(), anchor=previous)
    if not report.ok or not seen or seen[0].seq != cut:
        detail = str(report) if not report.ok else f"entry {cut} is missing"
        raise AuditIntegrityError(f"refusing to prune a ledger that does not verify: {detail}")
    return seen[0]


def _check_signature(checkpoint: Checkpoint, signing_key: Ed25519PrivateKey) -> None:
    try:
        verify_checkpoint(checkpoint, public_key=signing_key.public_key())
    except VerificationFailed:
        raise AuditIntegrityError(
            f"the checkpoint at entry {checkpoint.seq} is not signed by this key"
        ) from None


def _latest_checkpoint(connection: Connection) -> Checkpoint | None:
    query = select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1)
    row = connection.execute(query).one_or_none()
    if row is None:
        return None
    return Checkpoint(
        seq=int(row.seq),
        hash=row.hash,
        at=float(row.at),
        count_pruned=int(row.count_pruned),
        signature=row.signature,
    )


def _filters(
    until_seq: int | None,
    subject: str | None,
    kind: str | None,
    rule: str | None,
    outcome: str | None,
) -> list[ColumnElement[bool]]:
    columns = audit_entries.c
    wanted = {
        columns.subject: subject,
        columns.kind: kind,
        columns.rule: rule,
        columns.outcome: outcome,
    }
    conditions = [column == value for column, value in wanted.items() if value is not None]
    if until_seq is not None:
        conditions.append(columns.seq <= until_seq)
    return conditions


def _row(entry: AuditEntry) -> dict[str, Any]:
    fields = {
        "request": dict(entry.request),
        "reasons": list(entry.reasons),
        "detail": dict(entry.detail),
    }
    return {
        "seq": entry.seq,
        "at": entry.at,
        "kind": entry.kind,
        "subject": entry.subject,
        "session": entry.session,
        "decision": entry.decision,
        "rule": entry.rule,
        "factor": entry.factor,
        "outcome": entry.outcome,
        "fields": json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def _entry(row: Row[Any]) -> AuditEntry:
    """The stored entry; unreadable JSON becomes empty values, which `verify_chain` then flags."""
    try:
        fields = _json_object(json.loads(row.fields))
    except ValueError:
        fields = {}
    record = {
        "seq": int(row.seq),
        "at": float(row.at),
        "kind": row.kind,
        "subject": row.subject,
        "session": row.session,
        "request": _json_object(fields.get("request")),
        "decision": row.decision,
        "rule": row.rule,
        "reasons": [str(reason) for reason in _json_list(fields.get("reasons"))],
        "factor": row.factor,
        "outcome": row.outcome,
        "detail": _json_object(fields.get("detail")),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }
    return entry_from_record(record)


def _checkpoint_row(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "at": checkpoint.at,
        "count_pruned": checkpoint.count_pruned,
        "signature": checkpoint.signature,
    }


def _json_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
