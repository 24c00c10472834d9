"""Bring a database up to the newest schema with Alembic, from the installed package's scripts."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from stepguard.storage.engine import make_engine
from stepguard.storage.sql_base import unavailable_on_driver_error


def alembic_config(url: str) -> Config:
    """An in-memory Alembic config; the URL travels as an attribute (no `%` escaping issues)."""
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("stepguard.storage") / "migrations")
    )
    config.attributes["url"] = url
    return config


def upgrade(url: str, *, revision: str = "head") -> None:
    """Run `alembic upgrade <revision>` on the database at `url` (idempotent)."""
    with unavailable_on_driver_error():
        command.upgrade(alembic_config(url), revision)


def head() -> str:
    """The newest revision the package ships."""
    revision = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if revision is None:
        raise RuntimeError("no migrations found in the package")
    return revision


def current(url: str) -> str | None:
    """The revision the database at `url` is at (None: never migrated)."""
    engine = make_engine(url)
    try:
        with unavailable_on_driver_error(), engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
