"""The `store` fixture: every contract test runs on SQLite and on a real PostgreSQL.

Each test starts on empty, migrated tables: a copy of a migrated SQLite file, or one migrated
PostgreSQL database (for the whole session) whose tables are truncated before each test.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from stepguard.storage.engine import make_engine
from stepguard.storage.identity_tables import IDENTITY_TABLES
from stepguard.storage.interfaces import Store
from stepguard.storage.memory import MemoryStore
from stepguard.storage.migrate import upgrade
from stepguard.storage.sql import SqlStore
from stepguard.storage.tables import TABLES
from tests.support.postgres import create_database, drop_database


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_contract_url(postgres_url: str) -> Iterator[str]:
    url = create_database(postgres_url, prefix="contract")
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "store.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_store_url(postgres_contract_url: str) -> str:
    engine = make_engine(postgres_contract_url)
    try:
        with engine.begin() as connection:
            names = ", ".join(table.name for table in (*TABLES, *IDENTITY_TABLES))
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()
    return postgres_contract_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_store_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def sql_store(store_url: str) -> Iterator[SqlStore]:
    store = SqlStore.from_url(store_url)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Every backend: SQLite, PostgreSQL and the in-memory store pass the same contract."""
    if request.param == "memory":
        yield MemoryStore()
        return
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_store_url"
    sql = SqlStore.from_url(str(request.getfixturevalue(fixture)))
    yield sql
    sql.close()
