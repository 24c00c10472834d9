"""Database tokens of the postgres door on the shared `metadata` (migration `0011_pg`).

One row per token. Only its SCRAM-SHA-256 verifier is stored (salt, iterations, StoredKey,
ServerKey), never the token; a token is bound to the portal session that issued it.
"""

from __future__ import annotations

from sqlalchemy import Column, Double, Index, String, Table

from stepguard.storage.engine import metadata

db_tokens = Table(
    "db_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("verifier", String(255), nullable=False),
    Column("level", String(8), nullable=False),
    Column("created", Double, nullable=False),
    Column("expires", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    Index("ix_db_tokens_user", "user_id"),
)
