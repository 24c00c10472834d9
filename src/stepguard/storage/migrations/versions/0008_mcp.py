"""Agent tokens for the MCP door: per-user credentials, stored as SHA-256 of their secret.

Revision ID: 0008_mcp
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_mcp"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("expires", sa.Double, nullable=False),
        sa.Column("last_used", sa.Double, nullable=True),
        sa.Column("revoked_at", sa.Double, nullable=True),
    )
    op.create_index("ix_agent_tokens_user", "agent_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_agent_tokens_user", "agent_tokens")
    op.drop_table("agent_tokens")
