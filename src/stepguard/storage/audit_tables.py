"""The audit ledger's tables on the shared `metadata` (created by migration `0002_audit`).

`audit_entries` holds the hash-chained entries (request, reasons and detail as compact JSON text);
`audit_head` is one row naming the chain's last seq and hash, locked by every append so that all
writers, in any process or instance, extend one chain; `audit_checkpoints` keeps the signed
checkpoints left by pruning.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Double, Index, Integer, String, Table, Text

from stepguard.storage.engine import metadata

HEAD_ID = 1  # the one row of `audit_head`

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Double, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("session", String(64), nullable=False),
    Column("decision", String(32), nullable=False),
    Column("rule", String(255), nullable=False),
    Column("factor", String(32), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("fields", Text, nullable=False),  # JSON: request, reasons, detail
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # (filter, seq): each page of a filtered view is an ordered index range (migration 0010)
    Index("ix_audit_entries_kind_seq", "kind", "seq"),
    Index("ix_audit_entries_subject_seq", "subject", "seq"),
    Index("ix_audit_entries_rule_seq", "rule", "seq"),
    Index("ix_audit_entries_outcome_seq", "outcome", "seq"),
    Index("ix_audit_entries_at_seq", "at", "seq"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("at", Double, nullable=False),
    Column("count_pruned", BigInteger, nullable=False),
    Column("signature", String(128), nullable=False),
)
