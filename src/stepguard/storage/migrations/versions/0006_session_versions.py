"""Per-session and per-user versions replace the global store epoch.

A cached session stays valid while its own version and its user's version are unchanged; a
revocation, step-up or grant change raises only the versions it touches, so other users' caches
stay warm.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("sessions", "users"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("version", sa.BigInteger, nullable=False,
                                       server_default="0"))
    op.drop_table("store_epoch")


def downgrade() -> None:
    table = op.create_table(
        "store_epoch",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "value": 0}])
    for name in ("sessions", "users"):
        with op.batch_alter_table(name) as batch:
            batch.drop_column("version")
