"""Database tokens for the postgres door (SCRAM verifiers, bound to a portal session).

Revision ID: 0011_pg
Revises: 0010_rollout
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_pg"
down_revision = "0010_rollout"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "db_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("verifier", sa.String(255), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("expires", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double, nullable=True),
    )
    op.create_index("ix_db_tokens_user", "db_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_db_tokens_user", "db_tokens")
    op.drop_table("db_tokens")
