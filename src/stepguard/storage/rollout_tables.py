"""Tables of migration `0010_rollout`: policy versions and notification dead letters."""

from __future__ import annotations

from sqlalchemy import Column, Double, Integer, String, Table, Text

from stepguard.storage.engine import metadata

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("loaded_at", Double, nullable=False),
    Column("source", String(255), nullable=False),
    Column("text", Text, nullable=False),
)

notification_dead_letters = Table(
    "notification_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Double, nullable=False),
    Column("channel", String(32), nullable=False),
    Column("target", String(512), nullable=False),
    Column("event", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", String(512), nullable=False),
)
