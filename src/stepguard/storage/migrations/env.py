"""Alembic environment: runs the migrations on the URL or connection `migrate.py` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

import stepguard.storage.api_key_tables  # noqa: F401
import stepguard.storage.audit_tables  # noqa: F401
import stepguard.storage.db_token_tables  # noqa: F401
import stepguard.storage.identity_tables  # noqa: F401
import stepguard.storage.tables  # noqa: F401  (puts the tables on `metadata` for autogenerate)
from stepguard.storage.engine import make_engine, metadata

# Serialises concurrent `upgrade` runs of several instances sharing one PostgreSQL database.
UPGRADE_LOCK = 0x5354_4550_4755_4152  # "STEPGUAR"


def _url() -> str:
    url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    return str(url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": UPGRADE_LOCK})
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
