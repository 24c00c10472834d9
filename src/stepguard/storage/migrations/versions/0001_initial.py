"""Initial schema: users, factors, recovery codes, sessions, challenges, grants, throttle, history.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 64


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("username_key", sa.String(255), nullable=False, unique=True),
        sa.Column("display_name", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created", sa.Double, nullable=False),
    )
    op.create_table(
        "factors",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column(
            "user_id", sa.String(ID), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("last_used", sa.Double),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("credential_id", sa.LargeBinary, unique=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("sign_count", sa.BigInteger, nullable=False),
        sa.Column("last_step", sa.BigInteger),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_factors_user_id", "factors", ["user_id"])
    op.create_table(
        "recovery_codes",
        sa.Column(
            "user_id",
            sa.String(ID),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("code_hash", sa.String(255), primary_key=True),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("used_at", sa.Double),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("token_hash", sa.String(128), nullable=False, unique=True),
        sa.Column(
            "user_id", sa.String(ID), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("last_seen", sa.Double, nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.Double),
        sa.Column("device_id", sa.String(128), nullable=False),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "session_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "session_id",
            sa.String(ID),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("factor", sa.String(16), nullable=False),
        sa.Column("amr", sa.Text, nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_index("ix_session_events_session_id", "session_events", ["session_id", "id"])
    op.create_table(
        "challenges",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("user_id", sa.String(ID)),
        sa.Column("session_id", sa.String(ID)),
        sa.Column("requirement", sa.Text, nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("rule", sa.String(255), nullable=False),
        sa.Column("login", sa.Boolean, nullable=False),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("binding", sa.String(128), nullable=False),
        sa.Column("bound_values", sa.Text, nullable=False),
        sa.Column("return_url", sa.Text, nullable=False),
        sa.Column("held_method", sa.String(16), nullable=False),
        sa.Column("held_headers", sa.Text, nullable=False),
        sa.Column("held_body", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("expires", sa.Double, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ceremony", sa.Text),
    )
    op.create_index("ix_challenges_expires", "challenges", ["expires"])
    op.create_table(
        "grants",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("subject_id", sa.String(ID), nullable=False),
        sa.Column("session_id", sa.String(ID), nullable=False),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("amr", sa.Text, nullable=False),
        sa.Column("granted_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("single_use", sa.Boolean, nullable=False),
        sa.Column("binding", sa.String(128), nullable=False),
        sa.Column("factor", sa.String(16), nullable=False),
        sa.Column("consumed_at", sa.Double),
    )
    op.create_index("ix_grants_session_id", "grants", ["session_id"])
    op.create_index("ix_grants_expires_at", "grants", ["expires_at"])
    op.create_table(
        "throttle",
        sa.Column("key", sa.String(320), primary_key=True),
        sa.Column("consecutive", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.Double, nullable=False),
        sa.Column("hard_locked", sa.Boolean, nullable=False),
        sa.Column("last_failure", sa.Double, nullable=False),
    )
    op.create_table(
        "risk_history",
        sa.Column("user_id", sa.String(ID), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for index, table in (
        ("ix_grants_expires_at", "grants"),
        ("ix_grants_session_id", "grants"),
        ("ix_challenges_expires", "challenges"),
        ("ix_session_events_session_id", "session_events"),
        ("ix_sessions_user_id", "sessions"),
        ("ix_factors_user_id", "factors"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "risk_history",
        "throttle",
        "grants",
        "challenges",
        "session_events",
        "sessions",
        "recovery_codes",
        "factors",
        "users",
    ):
        op.drop_table(table)
