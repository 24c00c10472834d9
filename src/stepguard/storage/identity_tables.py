"""Identity-provider tables on the shared `metadata` (created by migration `0009_oidc`)."""

from __future__ import annotations

from sqlalchemy import Column, Double, ForeignKey, Index, String, Table, Text

from stepguard.storage.engine import metadata
from stepguard.storage.tables import ID

# A user's identity at a provider. (issuer, subject) is the key; there is no index on email on
# purpose: an email never finds a user.
user_identities = Table(
    "user_identities",
    metadata,
    Column("issuer", String(512), primary_key=True),
    Column("subject", String(255), primary_key=True),
    Column("user_id", String(ID), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("email", String(320), nullable=False),
    Column("created", Double, nullable=False),
    Column("last_login", Double, nullable=False),
    Index("ix_user_identities_user_id", "user_id"),
)

# Authorization requests in flight; a row is deleted when its callback arrives (single use).
oidc_flows = Table(
    "oidc_flows",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("browser_hash", String(64), nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("code_verifier", String(128), nullable=False),
    Column("return_url", Text, nullable=False),
    Column("challenge_id", String(ID), nullable=False),
    Column("session_id", String(ID), nullable=False),
    Column("max_age", Double),
    Column("acr_values", Text, nullable=False),
    Column("prompt", String(32), nullable=False),
    Column("created", Double, nullable=False),
    Column("expires", Double, nullable=False),
    Index("ix_oidc_flows_expires", "expires"),
)

# Which provider session a Stepguard session came from (back-channel logout, RP logout).
oidc_sessions = Table(
    "oidc_sessions",
    metadata,
    Column("session_id", String(ID), ForeignKey("sessions.id", ondelete="CASCADE"),
           primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("issuer", String(512), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("sid", String(255), nullable=False),
    Column("id_token", Text, nullable=False),
    Index("ix_oidc_sessions_subject", "issuer", "subject"),
    Index("ix_oidc_sessions_sid", "issuer", "sid"),
)

# `jti`s of accepted logout tokens, kept until the token could no longer be accepted (replay).
oidc_logout_tokens = Table(
    "oidc_logout_tokens",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("expires", Double, nullable=False),
)

IDENTITY_TABLES = (user_identities, oidc_flows, oidc_sessions, oidc_logout_tokens)
