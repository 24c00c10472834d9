"""Contract: the store as a whole - transactions, readiness, outages, migrations."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from stepguard.core.errors import StoreUnavailable
from stepguard.storage.engine import metadata
from stepguard.storage.migrate import alembic_config, current, head, upgrade
from stepguard.storage.sql import SqlStore
from stepguard.storage.tables import TABLES
from tests.contract import build
from tests.contract.build import NOW
from tests.support.postgres import _free_port


class Boom(Exception):
    pass


def test_transaction_commits_every_role_call_together(store: SqlStore) -> None:
    alice = build.user()
    session = build.session(alice.id)
    with store.transaction():
        store.users.add(alice)
        store.sessions.add(session)
        assert store.sessions.get(session.id) == session  # reads see the open transaction
    assert store.sessions.get(session.id) == session


def test_transaction_rolls_back_every_role_call_on_error(store: SqlStore) -> None:
    alice = build.user()
    store.users.add(alice)
    session = build.session(alice.id)
    store.sessions.add(session)
    with pytest.raises(Boom), store.transaction():
        store.users.set_password_hash(alice.id, "$argon2id$changed")
        store.sessions.revoke_all_for_user(alice.id, now=NOW)
        raise Boom
    stored = store.users.get(alice.id)
    assert stored is not None and stored.password_hash == ""
    assert store.sessions.get(session.id) == session


def test_ping_answers(store: SqlStore) -> None:
    store.ping()


def test_migrated_schema_matches_the_tables(store_url: str, sql_store: SqlStore) -> None:
    assert current(store_url) == head()
    upgrade(store_url)  # idempotent
    mine = MetaData()
    for table in TABLES:
        table.to_metadata(mine)
    with sql_store.engine.connect() as connection:
        only_mine = {"include_name": lambda name, kind, _: kind != "table" or name in mine.tables}
        context = MigrationContext.configure(connection, opts=only_mine)
        assert compare_metadata(context, mine) == []
    assert all(table.metadata is metadata for table in TABLES)


def test_downgrade_removes_the_tables_and_upgrade_restores_them(store_url: str) -> None:
    command.downgrade(alembic_config(store_url), "base")
    probe = SqlStore.from_url(store_url)
    try:
        names = set(inspect(probe.engine).get_table_names())
        assert not names & {table.name for table in TABLES}
        upgrade(store_url)
        probe.users.add(build.user())
        assert len(probe.users.list()) == 1
    finally:
        probe.close()


def test_unreachable_postgres_is_unavailable() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/none"
    store = SqlStore.from_url(url, connect_timeout=1)
    try:
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.sessions.by_token_hash("x")
        with pytest.raises(StoreUnavailable):
            upgrade(url)
    finally:
        store.close()


def test_unopenable_sqlite_is_unavailable(tmp_path: object) -> None:
    store = SqlStore.from_url(f"sqlite:///{tmp_path}/missing-dir/store.db")
    try:
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.grants.consume("g", session_id="s", now=NOW)
    finally:
        store.close()
