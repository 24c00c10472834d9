"""The batched versions read awaited on the event loop (PostgreSQL): each request's answer comes
from a statement sent after it asked, so a change committed before a request is always seen
(SECURITY.md case 12), and any failure fails the waiting requests closed."""

from __future__ import annotations

import asyncio
import select
import threading
from collections.abc import Iterator

import psycopg
import pytest

from stepguard.core.errors import StoreUnavailable
from stepguard.storage import version_batches
from stepguard.storage.records import SessionRecord, Versions
from stepguard.storage.sql import SqlStore
from stepguard.storage.version_batches import VersionBatches
from tests.contract import build
from tests.contract.build import NOW

pytestmark = pytest.mark.postgres


@pytest.fixture
def stores(postgres_store_url: str) -> Iterator[tuple[SqlStore, SqlStore]]:
    """This instance's store and another instance's, on one database."""
    mine, other = SqlStore.from_url(postgres_store_url), SqlStore.from_url(postgres_store_url)
    yield mine, other
    mine.close()
    other.close()


def sessions(store: SqlStore, count: int) -> list[SessionRecord]:
    user = build.user(f"user-{build.new_id()[:8]}")
    store.users.add(user)
    found = [build.session(user.id) for _ in range(count)]
    for session in found:
        store.sessions.add(session)
    return found


def batches_of(store: SqlStore) -> VersionBatches:
    batches = store.session_states.batches
    assert batches is not None
    return batches


def test_concurrent_reads_share_statements_and_each_gets_its_own_row(
        stores: tuple[SqlStore, SqlStore]) -> None:
    mine, _ = stores
    batches = batches_of(mine)
    live = sessions(mine, 20)
    keys = [s.token_hash for s in live] + [live[0].token_hash, "no-such-hash", 'a"b\\c']

    async def run() -> list[Versions | None]:
        return list(await asyncio.gather(*(batches.read(key) for key in keys)))

    found = asyncio.run(run())
    assert all(isinstance(v, Versions) and v.last_seen == s.last_seen
               for v, s in zip(found, live, strict=False))
    assert found[20] == found[0]
    assert found[21] is None and found[22] is None
    assert batches.statements <= 2  # 23 requests, one statement (or two, if one was in flight)


def test_a_request_never_joins_a_statement_sent_before_it_asked(
        stores: tuple[SqlStore, SqlStore]) -> None:
    """The statement for A has run (its answer waits on the socket, unread) when another
    instance signs the session out; B, asking afterwards, must get the next statement's
    answer — no row — not A's."""
    mine, other = stores
    batches = batches_of(mine)
    session = sessions(mine, 1)[0]

    async def run() -> tuple[Versions | None, Versions | None, int]:
        first = asyncio.ensure_future(batches.read(session.token_hash))
        await asyncio.sleep(0)  # A queues its token
        await asyncio.sleep(0)  # the statement is sent
        connection = batches._connection  # noqa: SLF001 — the test holds the loop still
        assert connection is not None and batches.statements == 1
        select.select([connection.connection.pgconn.socket], [], [], 5)  # A's answer arrived
        other.sessions.revoke(session.id, now=NOW)  # committed by another instance
        second = asyncio.ensure_future(batches.read(session.token_hash))
        return await first, await second, batches.statements

    a, b, statements = asyncio.run(run())
    assert isinstance(a, Versions)  # read before the revocation
    assert b is None
    assert statements == 2


def test_a_dropped_connection_fails_closed_then_the_loop_reconnects(
        stores: tuple[SqlStore, SqlStore], postgres_store_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    mine, _ = stores
    batches = batches_of(mine)
    session = sessions(mine, 1)[0]
    admin = psycopg.connect(postgres_store_url.replace("postgresql+psycopg", "postgresql"),
                            autocommit=True)

    async def run() -> None:
        assert isinstance(await batches.read(session.token_hash), Versions)
        connection = batches._connection  # noqa: SLF001
        assert connection is not None
        admin.execute("SELECT pg_terminate_backend(%s)",
                      (connection.connection.pgconn.backend_pid,))
        with pytest.raises(StoreUnavailable):
            for _ in range(50):  # the dead socket fails the next read (or the one after)
                await batches.read(session.token_hash)
                await asyncio.sleep(0.02)
        with pytest.raises(StoreUnavailable):  # no reconnect right after a failure
            await batches.read(session.token_hash)
        monkeypatch.setattr(version_batches, "RETRY_AFTER", 0.0)
        assert isinstance(await batches.read(session.token_hash), Versions)

    try:
        asyncio.run(run())
    finally:
        admin.close()


def test_no_answer_in_time_fails_closed(stores: tuple[SqlStore, SqlStore],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mine, other = stores
    batches = batches_of(mine)
    session = sessions(mine, 1)[0]
    batches.timeout = 0.3
    locker = psycopg.connect(str(other.engine.url.render_as_string(hide_password=False))
                             .replace("postgresql+psycopg", "postgresql"))
    try:
        async def run() -> None:
            assert isinstance(await batches.read(session.token_hash), Versions)
            locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")  # the next one waits
            with pytest.raises(StoreUnavailable):
                await batches.read(session.token_hash)

        asyncio.run(run())
    finally:
        locker.rollback()
        locker.close()


def test_a_second_running_loop_is_refused_not_served(stores: tuple[SqlStore, SqlStore]) -> None:
    """The connection belongs to one event loop: a read from another running loop (another
    thread) raises `StoreUnavailable` (its caller takes the thread path) and leaves the first
    loop's reads alone."""
    mine, _ = stores
    batches = batches_of(mine)
    session = sessions(mine, 1)[0]
    refused: list[BaseException] = []

    def other_loop() -> None:
        async def read() -> None:
            try:
                await batches.read(session.token_hash)
            except StoreUnavailable as error:
                refused.append(error)
        asyncio.run(read())

    async def run() -> Versions | None:
        assert isinstance(await batches.read(session.token_hash), Versions)
        thread = threading.Thread(target=other_loop)
        thread.start()
        thread.join()
        return await batches.read(session.token_hash)

    assert isinstance(asyncio.run(run()), Versions)
    assert len(refused) == 1
