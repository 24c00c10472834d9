"""The postgres door against a real PostgreSQL (started here) with real clients.

`door` gives a running gateway (its own event loop in a thread) in front of a fresh database
with `customers` and `cards`, alice signed in (aal1 session) with a database token, and helpers
to approve the statement a connection is waiting on (alice's TOTP through `StepUp`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stepguard.core.context import AuthEvent
from stepguard.core.levels import Level
from stepguard.pgwire.gateway import PostgresGateway
from stepguard.pgwire.tokens import connection_string
from stepguard.service.runtime import Runtime, hash_token, new_id, new_token
from stepguard.service.stepup import Passed, StepUp
from stepguard.storage.records import ChallengeRecord, SessionRecord
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user
from tests.support.postgres import PostgresServer, create_database, running_postgres
from tests.support.servers import free_port

POLICY = """\
rules:
  - name: no-server-files
    match: {postgres: {kinds: [admin]}}
    deny: "Server files, programs and maintenance are not run through Stepguard."
  - name: customers-wipe
    match: {postgres: {kinds: [delete, update, truncate], tables: [public.customers]}}
    when: "sql.unbounded"
    require: {level: aal2, max_age: 0s, methods: [totp, webauthn],
              reason: "Deleting or changing every row of {sql.tables} needs a fresh proof."}
  - name: customers-delete
    match: {postgres: {kinds: [delete], tables: [public.customers]}}
    require: {level: aal2, max_age: 0s, reason: "Deleting customers needs a fresh proof."}
  - name: card-numbers
    match: {postgres: {columns: [public.cards.number]}}
    require: {level: aal2, max_age: 0s, reason: "Reading card numbers needs a fresh proof."}
  - name: risky
    match: {postgres: {kinds: [function, set_role, grant, ddl, copy]}}
    require: {level: aal2, max_age: 0s, reason: "This statement needs a fresh proof."}
  - name: web-admin
    match: {paths: ["/**"]}
    allow: true
default: {level: aal1}
"""

SCHEMA = [
    "CREATE TABLE customers (id int primary key, name text)",
    "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 10) g",
    "CREATE TABLE cards (id int primary key, number text, holder text)",
    "INSERT INTO cards VALUES (1, '4111111111111111', 'c1')",
    "CREATE VIEW customer_cards AS SELECT id, number FROM cards",
    "CREATE TABLE log (id serial primary key, note text)",
    "CREATE FUNCTION purge() RETURNS int LANGUAGE sql AS 'DELETE FROM customers RETURNING 1'",
]


@dataclass
class Door:
    runtime: Runtime
    clock: Clock
    alice: Seeded
    session: SessionRecord
    token: str
    gateway: PostgresGateway
    loop: asyncio.AbstractEventLoop
    port: int
    database: str
    admin_url: str
    user_name: str = ""
    secret: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, **options: str) -> str:
        url = connection_string(host="127.0.0.1", port=self.port, user_name=self.user_name,
                                secret=self.secret, database="app", sslmode="disable")
        for key, value in options.items():
            url += f"&{key}={value}"
        return url

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True, **kwargs)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True)

    def count(self, table: str = "customers") -> int:
        with self.admin() as connection:
            return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def pending(self, timeout: float = 10.0) -> ChallengeRecord:
        """The challenge a held statement is waiting on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.runtime.store.challenges.pending_for_session(
                self.session.id, now=self.clock.now)
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError("no statement is waiting for a step-up")

    def approve(self, challenge: ChallengeRecord | None = None) -> Passed:
        challenge = challenge or self.pending()
        self.clock.advance(30)
        session = self.runtime.store.sessions.get(self.session.id)
        assert session is not None
        return StepUp(self.runtime).verify_totp(challenge.id, session,
                                                self.alice.code(self.clock.now), client_ip="")

    def approve_in_background(self, count: int = 1) -> threading.Thread:
        def run() -> None:
            for _ in range(count):
                self.approve()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def _start(runtime: Runtime, folder: Path) -> tuple[PostgresGateway, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    gateway = PostgresGateway(runtime, base=folder)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(gateway.start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    return gateway, loop


def make_door(folder: Path, server: PostgresServer, *, extra: str = "",
              policy: str = POLICY, database_extra: str = "",
              extra_at_top: bool = False, user: str = "postgres") -> Door:
    database_url = create_database(server.url(), prefix="door")
    name = database_url.rsplit("/", 1)[1]
    admin_url = f"postgresql://postgres@127.0.0.1:{server.port}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        for statement in SCHEMA:
            connection.execute(statement)
    port = free_port()
    top, extra = (extra, "") if extra_at_top else ("", extra)
    config = f"""
postgres:
  hold_timeout: 20s
  poll_interval: 0.05s
{top}  listeners:
    - listen: "127.0.0.1:{port}"
{extra}      databases:
        - {{name: app, upstream: "127.0.0.1:{server.port}", database: {name}, user: {user},
           views: {{public.customer_cards: [public.cards]}}{database_extra}}}
"""
    clock = Clock(now=time.time())
    runtime = make_runtime(folder, clock=clock, policy=policy, extra=config)
    alice = seed_user(runtime)
    token, now = new_token(), clock.now
    session = SessionRecord(
        id=new_id(), token_hash=hash_token(token), user_id=alice.user.id, created=now,
        last_seen=now, events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1,
                                         at=now),))
    runtime.store.sessions.add(session)
    gateway, loop = _start(runtime, folder)
    door = Door(runtime, clock, alice, session, token, gateway, loop, port, name, admin_url)
    issued = gateway.tokens.issue(session, alice.user, level="aal1")
    door.user_name, door.secret = issued.user_name, issued.secret
    return door


def stop_door(door: Door) -> None:
    asyncio.run_coroutine_threadsafe(door.gateway.close(), door.loop).result(10)
    door.loop.call_soon_threadsafe(door.loop.stop)
    door.runtime.close()


@pytest.fixture()
def door(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Door]:
    made = make_door(tmp_path, postgres_server)
    yield made
    stop_door(made)
