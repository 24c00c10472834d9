"""A challenge keeps its rule's reason in every language the policy gives it in.

Revision ID: 0012_reason_languages
Revises: 0011_pg
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_reason_languages"
down_revision = "0011_pg"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.add_column(sa.Column("reason_texts", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.drop_column("reason_texts")
