"""Rollout and operations (issue 14): audit paging indexes, policy versions, notification
dead letters.

- The audit view and replay page through entries in seq order under a filter. Single-column
  indexes on kind and subject made SQLite and PostgreSQL read every matching row and sort it for
  each page; composite (filter, seq) indexes give each page as an ordered index range, and
  (at, seq) turns a time range into a seq range without touching the rows.
- `policy_versions`: each distinct policy text loaded by `serve`, numbered, for the admin
  page's "policy in force, its version and the diff against the previous one".
- `notification_dead_letters`: webhook deliveries that failed every retry, kept for operators.

Revision ID: 0010_rollout
Revises: 0009_oidc
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_rollout"
down_revision = "0009_oidc"
branch_labels = None
depends_on = None

_COMPOSITE = {
    "ix_audit_entries_kind_seq": ["kind", "seq"],
    "ix_audit_entries_subject_seq": ["subject", "seq"],
    "ix_audit_entries_rule_seq": ["rule", "seq"],
    "ix_audit_entries_outcome_seq": ["outcome", "seq"],
    "ix_audit_entries_at_seq": ["at", "seq"],
}
_REPLACED = {"ix_audit_entries_kind": ["kind"], "ix_audit_entries_subject": ["subject"],
             "ix_audit_entries_at": ["at"]}


def upgrade() -> None:
    for name, columns in _COMPOSITE.items():
        op.create_index(name, "audit_entries", columns)
    for name in _REPLACED:
        op.drop_index(name, table_name="audit_entries")
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("loaded_at", sa.Double, nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_table(
        "notification_dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(512), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("notification_dead_letters")
    op.drop_table("policy_versions")
    for name, columns in _REPLACED.items():
        op.create_index(name, "audit_entries", columns)
    for name in _COMPOSITE:
        op.drop_index(name, table_name="audit_entries")
