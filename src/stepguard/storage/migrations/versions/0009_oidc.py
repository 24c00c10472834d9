"""Identity providers (OpenID Connect): linked identities, flows in flight, provider sessions
and the logout tokens already used.

Revision ID: 0009_oidc
Revises: 0008_mcp
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_oidc"
down_revision = "0008_mcp"
branch_labels = None
depends_on = None

ID = 64


def upgrade() -> None:
    op.create_table(
        "user_identities",
        sa.Column("issuer", sa.String(512), primary_key=True),
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("user_id", sa.String(ID), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("last_login", sa.Double, nullable=False),
    )
    op.create_index("ix_user_identities_user_id", "user_identities", ["user_id"])
    op.create_table(
        "oidc_flows",
        sa.Column("state_hash", sa.String(64), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("browser_hash", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("return_url", sa.Text, nullable=False),
        sa.Column("challenge_id", sa.String(ID), nullable=False),
        sa.Column("session_id", sa.String(ID), nullable=False),
        sa.Column("max_age", sa.Double),
        sa.Column("acr_values", sa.Text, nullable=False),
        sa.Column("prompt", sa.String(32), nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("expires", sa.Double, nullable=False),
    )
    op.create_index("ix_oidc_flows_expires", "oidc_flows", ["expires"])
    op.create_table(
        "oidc_sessions",
        sa.Column("session_id", sa.String(ID), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("sid", sa.String(255), nullable=False),
        sa.Column("id_token", sa.Text, nullable=False),
    )
    op.create_index("ix_oidc_sessions_subject", "oidc_sessions", ["issuer", "subject"])
    op.create_index("ix_oidc_sessions_sid", "oidc_sessions", ["issuer", "sid"])
    op.create_table(
        "oidc_logout_tokens",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("expires", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in ("oidc_logout_tokens", "oidc_sessions", "oidc_flows", "user_identities"):
        op.drop_table(table)
