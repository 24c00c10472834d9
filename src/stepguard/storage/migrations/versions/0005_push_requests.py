"""Push approval requests (the device keys are factors of kind "push", already in `factors`).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "push_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("challenge_id", sa.String(64), nullable=False),
        sa.Column(
            "user_id",
            sa.String(64),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("requesting_session_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("expires", sa.Double, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("answered_at", sa.Double, nullable=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.Text, nullable=False),
        sa.Column("location", sa.String(255), nullable=False),
    )
    op.create_index("ix_push_requests_user_id", "push_requests", ["user_id", "created"])
    op.create_index("ix_push_requests_challenge_id", "push_requests", ["challenge_id"])


def downgrade() -> None:
    op.drop_index("ix_push_requests_challenge_id", "push_requests")
    op.drop_index("ix_push_requests_user_id", "push_requests")
    op.drop_table("push_requests")
