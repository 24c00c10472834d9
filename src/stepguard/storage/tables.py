"""SQL tables on the shared `metadata` (created only by the Alembic migrations).

Times are epoch seconds (double precision). JSON values are stored as compact text so that both
dialects store the same bytes and `IS NULL` means absent.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from stepguard.storage.engine import metadata

ID = 64  # length of every identifier column

users = Table(
    "users",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("username", String(255), nullable=False),
    Column("username_key", String(255), nullable=False, unique=True),
    Column("display_name", String(255), nullable=False),
    Column("email", String(320), nullable=False),
    Column("groups", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created", Double, nullable=False),
    Column("version", BigInteger, nullable=False, server_default="0"),  # see `versions` below
)

factors = Table(
    "factors",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(ID), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("label", String(255), nullable=False),
    Column("created", Double, nullable=False),
    Column("last_used", Double),
    Column("secret", Text, nullable=False),
    Column("credential_id", LargeBinary, unique=True),  # NULL unless WebAuthn
    Column("public_key", LargeBinary, nullable=False),
    Column("sign_count", BigInteger, nullable=False),
    Column("last_step", BigInteger),
    Column("data", Text, nullable=False),
    Index("ix_factors_user_id", "user_id"),
)

recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column(
        "user_id",
        String(ID),
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("code_hash", String(255), primary_key=True),
    Column("created", Double, nullable=False),
    Column("used_at", Double),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("token_hash", String(128), nullable=False, unique=True),
    Column("user_id", String(ID), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("ip", String(64), nullable=False),
    Column("user_agent", Text, nullable=False),
    Column("revoked_at", Double),
    Column("device_id", String(128), nullable=False),
    Column("version", BigInteger, nullable=False, server_default="0"),
    Index("ix_sessions_user_id", "user_id"),
)

session_events = Table(
    "session_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "session_id",
        String(ID),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("factor", String(16), nullable=False),
    Column("amr", Text, nullable=False),
    Column("level", Integer, nullable=False),
    Column("at", Double, nullable=False),
    Index("ix_session_events_session_id", "session_id", "id"),
)

challenges = Table(
    "challenges",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(ID)),
    Column("session_id", String(ID)),
    Column("requirement", Text, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("rule", String(255), nullable=False),
    Column("login", Boolean, nullable=False),
    Column("scope", String(255), nullable=False),
    Column("binding", String(128), nullable=False),
    Column("bound_values", Text, nullable=False),
    Column("return_url", Text, nullable=False),
    Column("held_method", String(16), nullable=False),
    Column("held_headers", Text, nullable=False),
    Column("held_body", LargeBinary, nullable=False),
    Column("created", Double, nullable=False),
    Column("expires", Double, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("ceremony", Text),
    Column("reason_texts", Text),  # JSON [[language, text], ...]; NULL = one language
    Index("ix_challenges_expires", "expires"),
)

# One row per push approval request (the device keys themselves are factors of kind "push").
push_requests = Table(
    "push_requests",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("challenge_id", String(ID), nullable=False),
    Column("user_id", String(ID), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("requesting_session_id", String(ID), nullable=False),
    Column("number", Integer, nullable=False),
    Column("options", Text, nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("digest", String(128), nullable=False),
    Column("created", Double, nullable=False),
    Column("expires", Double, nullable=False),
    Column("status", String(16), nullable=False),
    Column("answered_at", Double),
    Column("device_id", String(ID), nullable=False),
    Column("client_ip", String(64), nullable=False),
    Column("user_agent", Text, nullable=False),
    Column("location", String(255), nullable=False),
    Index("ix_push_requests_user_id", "user_id", "created"),
    Index("ix_push_requests_challenge_id", "challenge_id"),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("subject_id", String(ID), nullable=False),
    Column("session_id", String(ID), nullable=False),
    Column("scope", String(255), nullable=False),
    Column("level", Integer, nullable=False),
    Column("amr", Text, nullable=False),
    Column("granted_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("single_use", Boolean, nullable=False),
    Column("binding", String(128), nullable=False),
    Column("factor", String(16), nullable=False),
    Column("consumed_at", Double),
    Index("ix_grants_session_id", "session_id"),
    Index("ix_grants_expires_at", "expires_at"),
)

throttle = Table(
    "throttle",
    metadata,
    Column("key", String(320), primary_key=True),
    Column("consecutive", Integer, nullable=False),
    Column("locked_until", Double, nullable=False),
    Column("hard_locked", Boolean, nullable=False),
    Column("last_failure", Double, nullable=False),
)

risk_history = Table(
    "risk_history",
    metadata,
    Column("user_id", String(ID), primary_key=True),
    Column("data", Text, nullable=False),
)

# Cache versions: `sessions.version` grows whenever something a decision on that session depends
# on changes (an event added, the token rotated, the session revoked, a grant added or spent);
# `users.version` whenever something about the user does (disabled, groups, every session revoked,
# risk history). An instance's cached session is valid only while both still match: each request
# reads them (one indexed row), so a revocation anywhere takes effect on the next request
# everywhere, and a change to one user leaves every other user's cache entry warm.

TABLES = (
    users,
    factors,
    recovery_codes,
    sessions,
    session_events,
    challenges,
    push_requests,
    grants,
    throttle,
    risk_history,
)
