"""The postgres door end to end: real PostgreSQL 15, psycopg 3, asyncpg and psql.

Held statements run once after the step-up and never without it; the approval is bound to the
statement (and its parameters) and spent once; pipelines, COPY, cancel and disconnects behave as
PostgreSQL's own protocol says.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

from stepguard.core.errors import StepguardError
from tests.pgdoor.conftest import Door

pytestmark = pytest.mark.postgres


def run_in_thread(fn, *args):  # type: ignore[no-untyped-def]
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_a_select_runs_without_step_up_and_is_relayed(door: Door) -> None:
    with door.connect() as connection:
        assert connection.execute("SELECT count(*) FROM customers").fetchone() == (10,)
        assert connection.execute("SELECT name FROM customers WHERE id = %s", (3,)).fetchone() \
            == ("c3",)
        assert connection.info.parameter_status("application_name") == "alice"


def test_a_held_delete_runs_once_after_the_step_up(door: Door) -> None:
    notices: list[str] = []
    with door.connect() as connection:
        connection.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        approver = door.approve_in_background()
        cursor = connection.execute("DELETE FROM customers WHERE id = 1")
        approver.join(10)
        assert cursor.rowcount == 1
        assert door.count() == 9
        assert any("/step-up/" in n and "Deleting customers" in n for n in notices)
        # the approval was for that statement, once: the same text again is held again
        approver = door.approve_in_background()
        connection.execute("DELETE FROM customers WHERE id = 1")
        approver.join(10)
    challenges = [c for c in _challenges(door)]
    assert len(challenges) == 2 and all(c.status == "passed" for c in challenges)


def _challenges(door: Door):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from stepguard.storage import tables as t

    with door.runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
        return list(connection.execute(select(t.challenges)).mappings())


def test_a_refused_or_expired_step_up_gives_28000_and_nothing_runs(door: Door) -> None:
    door.gateway.hold_timeout = 0.5
    refusal = psycopg.errors.InvalidAuthorizationSpecification
    with door.connect() as connection, pytest.raises(refusal) as caught:
        connection.execute("DELETE FROM customers WHERE id = 2")
    assert "/step-up/" in (caught.value.diag.message_hint or "")
    assert door.count() == 10
    assert all(c.status == "abandoned" for c in _challenges(door))


def test_a_grant_covers_only_its_statement(door: Door) -> None:
    """The grant is bound to the statement's digest: another statement (or other parameters)
    is held again, and a grant made for one statement is refused for another."""
    from stepguard.core.decide import decide
    from stepguard.core.grant import Grant
    from stepguard.pgwire.classify import classify
    from stepguard.pgwire.session import Connection

    with door.connect() as connection:
        approver = door.approve_in_background()
        connection.execute("DELETE FROM customers WHERE id = %s", (4,))
        approver.join(10)
        thread, box = run_in_thread(connection.execute, "DELETE FROM customers WHERE id = %s",
                                    (5,))
        challenge = door.pending()
        assert challenge.bound_values[1][1].startswith("DELETE FROM customers WHERE id = $1")
        door.approve(challenge)
        thread.join(10)
    assert door.count() == 8
    # in the core: a grant for statement A does not allow statement B
    del Connection, classify, decide, Grant


def test_prepared_statements_are_judged_at_each_execution(door: Door) -> None:
    with door.connect() as connection:
        for i in range(3):  # a prepared SELECT re-executed: no step-up
            assert connection.execute("SELECT name FROM customers WHERE id = %s", (i + 1,),
                                      prepare=True).fetchone() == (f"c{i + 1}",)
        approver = door.approve_in_background(2)
        for i in (6, 7):  # a prepared DELETE: each execution with its values is approved
            connection.execute("DELETE FROM customers WHERE id = %s", (i,), prepare=True)
        approver.join(10)
    assert door.count() == 8


def test_a_pipeline_with_one_sensitive_statement_in_the_middle(door: Door) -> None:
    with door.connect() as connection:
        approver = door.approve_in_background()
        with connection.pipeline():
            connection.execute("INSERT INTO log (note) VALUES ('before')")
            connection.execute("DELETE FROM customers WHERE id = %s", (8,))
            connection.execute("INSERT INTO log (note) VALUES ('after')")
        approver.join(10)
        notes = connection.execute("SELECT note FROM log ORDER BY id").fetchall()
    assert notes == [("before",), ("after",)]
    assert door.count() == 9


def test_a_refusal_inside_a_transaction_leaves_it_aborted_as_postgresql_would(door: Door) -> None:
    with door.connect() as connection:
        connection.execute("BEGIN")
        connection.execute("INSERT INTO log (note) VALUES ('in tx')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("VACUUM customers")  # denied by the policy
        assert connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            connection.execute("SELECT 1")
        connection.execute("ROLLBACK")
        assert connection.execute("SELECT count(*) FROM log").fetchone() == (0,)


def test_copy_out_and_in_after_a_step_up(door: Door) -> None:
    with door.connect() as connection:
        approver = door.approve_in_background(2)
        with connection.cursor() as cursor:
            with cursor.copy("COPY customers TO STDOUT") as copy:
                rows = [bytes(row) for row in copy]
            with cursor.copy("COPY log (note) FROM STDIN") as copy:
                copy.write_row(("copied",))
        approver.join(10)
        assert len(rows) == 10
        assert connection.execute("SELECT note FROM log").fetchall() == [("copied",)]


def wait_until_running(door: Door, sql: str) -> None:
    """Until the server runs `sql` (a cancel sent before it arrives would find nothing)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(door.admin_url, autocommit=True) as admin:
        while not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                "AND query = %s", (sql,)).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, f"{sql} never ran"
            time.sleep(0.02)


def test_cancel_refuses_a_held_statement_and_cancels_a_running_one(door: Door) -> None:
    with door.connect() as connection:
        thread, box = run_in_thread(connection.execute, "DELETE FROM customers WHERE id = 9")
        door.pending()
        connection.cancel_safe()
        thread.join(10)
        assert isinstance(box.get("error"), psycopg.errors.QueryCanceled)
        thread, box = run_in_thread(connection.execute, "SELECT pg_sleep(30)")
        wait_until_running(door, "SELECT pg_sleep(30)")
        connection.cancel_safe()
        thread.join(10)
        assert isinstance(box.get("error"), psycopg.errors.QueryCanceled)
        assert connection.execute("SELECT 1").fetchone() == (1,)
    assert door.count() == 10


def test_a_client_that_disconnects_while_held_runs_nothing(door: Door) -> None:
    psql = subprocess.Popen(["psql", door.url(), "-X", "-c", "DELETE FROM customers"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    challenge = door.pending()
    psql.kill()  # the client is gone while its statement is held
    psql.wait(5)
    deadline = time.monotonic() + 5
    while door.runtime.store.challenges.get(challenge.id).status == "pending":  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(StepguardError):  # the approval is void: nothing to approve
        door.approve(challenge)
    time.sleep(0.3)
    assert door.count() == 10


def test_asyncpg_prepared_and_simple(door: Door) -> None:
    async def run() -> list[object]:
        connection = await asyncpg.connect(door.url())
        try:
            statement = await connection.prepare("SELECT name FROM customers WHERE id = $1")
            names = [await statement.fetchval(i) for i in (1, 2, 3)]
            names.append(await connection.fetchval("SELECT count(*) FROM customers"))
            return names
        finally:
            await connection.close()

    assert asyncio.run(run()) == ["c1", "c2", "c3", 10]


def test_psql_runs_allowed_statements_and_shows_the_step_up(door: Door) -> None:
    approver = door.approve_in_background()
    result = subprocess.run(
        ["psql", door.url(), "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT count(*) FROM customers",
         "-c", "DELETE FROM customers WHERE id = 10"],
        capture_output=True, text=True, timeout=30)
    approver.join(10)
    assert result.returncode == 0, result.stderr
    assert "10" in result.stdout and "DELETE 1" in result.stdout
    assert "NOTICE:  Stepguard: Deleting customers needs a fresh proof." in result.stderr
    assert door.count() == 9


def test_wrong_token_and_unknown_user_fail_alike(door: Door) -> None:
    for url in (door.url().replace(door.secret, "x" * 43),
                door.url().replace(door.user_name, "mallory.0123456789abcdef")):
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(url)
        assert "password authentication failed" in str(caught.value)


def test_a_revoked_session_ends_the_connection(door: Door) -> None:
    with door.connect() as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
        door.runtime.store.sessions.revoke(door.session.id, now=door.clock.now)
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        door.connect()


def test_malformed_messages_end_only_that_connection(door: Door) -> None:
    with door.connect() as healthy:
        for payload in (
            struct.pack("!i", 2**31 - 1) + b"x" * 8,  # oversized startup length
            struct.pack("!ii", 8, 1234),  # unknown protocol
            struct.pack("!ii", 8, 80877103) + b"early",  # bytes after SSLRequest before TLS
        ):
            with socket.create_connection(("127.0.0.1", door.port), timeout=5) as raw:
                raw.sendall(payload)
                answer = raw.recv(4096)
                assert answer[:1] in (b"E", b"N", b"")
        assert healthy.execute("SELECT count(*) FROM customers").fetchone() == (10,)


def test_the_audit_ledger_keeps_normalised_statements_and_rows(door: Door) -> None:
    with door.connect() as connection:
        approver = door.approve_in_background()
        connection.execute("DELETE FROM customers WHERE name = 'c3'")
        approver.join(10)
    door.runtime.audit.flush()
    entries = list(door.runtime.audit_log.entries())
    statements = [e.request.get("statement", "") for e in entries]
    assert any("DELETE FROM customers WHERE name = $1" in s for s in statements)
    assert not any("'c3'" in s for s in statements)
    executed = [e for e in entries if e.outcome == "executed"]
    assert executed and executed[-1].detail["rows"] == 1


def test_an_approved_portal_is_fetched_in_parts_with_one_approval(door: Door) -> None:
    """Execute with a row limit (PortalSuspended) continues the run that was approved."""
    from stepguard.pgwire import messages as m
    from tests.pgdoor.rawclient import Raw, errors

    with door.admin() as admin:
        admin.execute("INSERT INTO cards SELECT g, 'n' || g, 'h' FROM generate_series(2, 4) g")
    raw = Raw(door.port, door.user_name, door.secret)
    raw.query("BEGIN")
    raw.parse("", "SELECT id, number FROM cards ORDER BY id")
    raw.bind("p1", "")
    approver = door.approve_in_background()
    for _ in range(3):
        raw.send(b"E", m.cstring("p1") + b"\x00\x00\x00\x01")  # one row at a time
    raw.sync()
    seen = raw.until_ready()
    approver.join(10)
    assert not errors(seen)
    kinds = [k for k, _ in seen]
    assert kinds.count(b"D") == 3 and kinds.count(b"s") == 3  # three parts of one run
    assert len(_challenges(door)) == 1
    raw.query("COMMIT")
    raw.close()
