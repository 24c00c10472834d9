"""The decision API's client keys on the shared `metadata` (created by migration `0003_api_keys`).

One row per API client. Only the SHA-256 of the key's secret is stored (`secret_hash`); during a
rotation's grace period the previous secret's hash stays valid until `previous_until`.
"""

from __future__ import annotations

from sqlalchemy import Column, Double, String, Table

from stepguard.storage.engine import metadata

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("previous_hash", String(64), nullable=True),
    Column("previous_until", Double, nullable=True),
    Column("created", Double, nullable=False),
    Column("rotated_at", Double, nullable=True),
    Column("revoked_at", Double, nullable=True),
    Column("last_used", Double, nullable=True),
)
