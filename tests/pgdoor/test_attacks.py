"""SQL hidden from a naive classifier, and protocol tricks: none runs without its step-up.

Each case sends what an attacker would through a real client (psycopg, or the bare protocol
client) to the gateway in front of a real PostgreSQL 15. The step-up is never approved here (the
hold times out quickly), so a statement either is refused or is held and then refused — and the
data shows that nothing ran.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import psycopg
import pytest

from stepguard.pgwire import messages as m
from tests.pgdoor.conftest import Door, make_door, stop_door
from tests.pgdoor.rawclient import Raw, errors
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres

HELD = ("28000",)  # held, then refused because nobody approved it
REFUSED = ("28000", "42501", "42601", "26000", "34000", "42P05")


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory,
         postgres_server: PostgresServer) -> Iterator[Door]:
    made = make_door(tmp_path_factory.mktemp("attacks"), postgres_server)
    made.gateway.hold_timeout = 0.3
    yield made
    stop_door(made)


def refused(door: Door, sql: str, codes: tuple[str, ...] = REFUSED) -> str:
    with door.connect() as connection, pytest.raises(psycopg.Error) as caught:
        connection.execute(sql)
    code = caught.value.sqlstate or ""
    assert code in codes, (sql, code, str(caught.value))
    assert door.count() == 10, sql
    return code


@pytest.mark.parametrize("sql", [
    "DELETE /* a comment */ FROM customers WHERE id = 1",
    "delete\nfrom\n\tcustomers -- trailing comment\n where id = 1",
    'DELETE FROM "public"."customers" WHERE id = 1',
    "SELECT 1; DELETE FROM customers WHERE id = 1",
    "SELECT 1 /* ; */; DELETE FROM customers WHERE id = 1",
    "SELECT $$ ; $$; DELETE FROM customers WHERE id = 1",
    "SELECT $a$ $$ ; $a$; DELETE FROM customers WHERE id = 1",
    "SELECT 'a\\'; DELETE FROM customers WHERE id = 1; --'",
    "WITH gone AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM gone",
    "EXPLAIN ANALYZE DELETE FROM customers WHERE id = 1",
    "COPY (DELETE FROM customers RETURNING *) TO STDOUT",
    "SELECT purge()",
    "SELECT * FROM (SELECT purge()) AS hidden",
    "DO $$BEGIN DELETE FROM customers; END$$",
    "CALL nothing()",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT number FROM cards",
    "SELECT c FROM cards c",
    "SELECT row_to_json(cards) FROM cards",
    "TABLE cards",
    "SELECT * FROM customer_cards",
    "DECLARE c CURSOR WITH HOLD FOR SELECT number FROM cards",
    "CREATE TEMP VIEW v AS SELECT * FROM cards",
    "GRANT SELECT ON cards TO PUBLIC",
    "SELECT 1 OPERATOR(public.+) 2",
])
def test_hidden_sql_is_held(door: Door, sql: str) -> None:
    refused(door, sql)


@pytest.mark.parametrize("sql", [
    "SET standard_conforming_strings = off",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'LATIN1'",
    "SET application_name = 'bob'",
    "SET search_path = public, pg_catalog",
    "SELECT set_config('search_path', 'public, pg_catalog', false)",
    "SELECT set_config(current_user, 'x', false)",
    "SELEC * FROM customers",
    "VACUUM customers",
    "COPY customers FROM PROGRAM 'id'",
])
def test_settings_the_classifier_depends_on_and_unreadable_sql_are_refused(
        door: Door, sql: str) -> None:
    refused(door, sql)


def test_an_e_string_is_read_as_postgresql_reads_it(door: Door) -> None:
    """E'\\'' is one escaped quote: the whole text is one SELECT, on both sides."""
    with door.connect() as connection:
        row = connection.execute("SELECT E'\\'; DELETE FROM customers; --'").fetchone()
    assert row == ("'; DELETE FROM customers; --",)
    assert door.count() == 10


def test_sql_prepare_then_execute_is_judged_at_execute(door: Door) -> None:
    with door.connect() as connection:
        connection.execute("PREPARE p AS DELETE FROM customers WHERE id = $1")
        with pytest.raises(psycopg.Error) as caught:
            connection.execute("EXECUTE p(1)")
        assert caught.value.sqlstate == "28000"
        with pytest.raises(psycopg.Error):  # a name is never re-prepared with other text
            connection.execute("PREPARE p AS SELECT 1")
    assert door.count() == 10


def test_startup_parameters_cannot_set_the_role_or_parser_settings(door: Door) -> None:
    url = door.url(options="-c%20standard_conforming_strings%3Doff%20-c%20role%3Dpostgres")
    with psycopg.connect(url, autocommit=True) as connection:
        assert connection.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert connection.execute("SELECT current_user").fetchone() == ("postgres",)
        assert connection.execute("SHOW search_path").fetchone() == ('"$user", public',)


def _raw(door: Door) -> Raw:
    return Raw(door.port, door.user_name, door.secret)


def test_a_parse_after_a_skipped_error_does_not_change_what_bind_runs(door: Door) -> None:
    """After an error the server skips to Sync: a Parse in the skipped part never happened, so
    a later Bind of the unnamed statement still binds the DELETE, and is judged as one."""
    raw = _raw(door)
    raw.parse("", "DELETE FROM customers")
    raw.sync()
    assert not errors(raw.until_ready())
    raw.bind("", "missing")  # fails on the server: everything to Sync is skipped
    raw.parse("", "SELECT 1")
    raw.sync()
    assert errors(raw.until_ready())
    raw.bind()
    raw.execute()
    raw.sync()
    found = errors(raw.until_ready())  # PostgreSQL 15 dropped it (26000) or Stepguard held it
    assert found and found[0]["C"] in ("26000", "28000")
    assert door.count() == 10
    raw.close()


def test_a_close_skipped_after_an_error_leaves_the_statement_judged_as_it_is(door: Door) -> None:
    raw = _raw(door)
    raw.parse("wipe", "DELETE FROM customers")
    raw.sync()
    assert not errors(raw.until_ready())
    raw.bind("", "missing")  # fails: the Close below is skipped by the server
    raw.send(b"C", b"S" + m.cstring("wipe"))
    raw.sync()
    assert errors(raw.until_ready())
    raw.bind("", "wipe")  # still the DELETE on the server, and judged as one
    raw.execute()
    raw.sync()
    assert [e["C"] for e in errors(raw.until_ready())] == ["28000"]
    assert door.count() == 10
    raw.close()


def test_a_statement_name_is_never_reused(door: Door) -> None:
    raw = _raw(door)
    raw.parse("s1", "DELETE FROM customers")
    raw.sync()
    raw.until_ready()
    raw.send(b"C", b"S" + m.cstring("s1"))
    raw.parse("s1", "SELECT 1")
    raw.sync()
    assert errors(raw.until_ready())[0]["C"] == "42P05"
    raw.close()


def test_multiple_statements_in_one_parse_are_refused(door: Door) -> None:
    raw = _raw(door)
    raw.parse("", "SELECT 1; DELETE FROM customers")
    raw.bind()
    raw.execute()
    raw.sync()
    assert errors(raw.until_ready())[0]["C"] == "42601"
    assert door.count() == 10
    raw.close()


def test_the_fast_path_function_call_is_refused(door: Door) -> None:
    raw = _raw(door)
    raw.send(b"F", struct.pack("!ih", 1255, 0) + struct.pack("!hh", 0, 0))
    raw.sync()
    assert errors(raw.until_ready())[0]["C"] == "42501"
    raw.close()


def test_an_unknown_portal_is_refused(door: Door) -> None:
    raw = _raw(door)
    raw.query("BEGIN")
    raw.query("DECLARE c CURSOR FOR SELECT name FROM customers")
    raw.execute("c")  # a portal the gateway did not bind
    raw.sync()
    assert errors(raw.until_ready())[0]["C"] == "34000"
    raw.close()


def test_a_refused_statement_in_a_pipeline_skips_the_rest_to_sync(door: Door) -> None:
    raw = _raw(door)
    raw.parse("", "DELETE FROM customers")
    raw.bind()
    raw.execute()  # held, then refused
    raw.parse("", "INSERT INTO log (note) VALUES ('after the refusal')")
    raw.bind()
    raw.execute()  # skipped, as PostgreSQL skips after an error
    raw.sync()
    seen = raw.until_ready()
    assert [e["C"] for e in errors(seen)] == ["28000"]
    assert door.count() == 10 and door.count("log") == 0
    assert raw.query("SELECT 1")[-1][0] == b"Z"
    raw.close()


def test_a_nul_inside_a_query_ends_the_connection(door: Door) -> None:
    raw = _raw(door)
    raw.send(b"Q", b"SELECT 1\x00; DELETE FROM customers\x00")
    kind, body = raw.read()
    assert kind == b"E" and m.fields(body)["C"] == "08P01"
    assert door.count() == 10


def test_an_oversized_message_is_refused_before_it_is_read(door: Door) -> None:
    raw = _raw(door)
    raw.send_raw(b"Q" + struct.pack("!i", 2**31 - 1))
    kind, body = raw.read()
    assert kind == b"E" and m.fields(body)["C"] == "08P01"


def test_listen_and_notify_pass_through(door: Door) -> None:
    with door.connect() as listener, door.connect() as sender:
        listener.execute("LISTEN news")
        sender.execute("NOTIFY news, 'hello'")
        received = next(listener.notifies(timeout=5, stop_after=1))
    assert received.payload == "hello"


def test_text_read_differently_after_a_settings_change_waits_for_it(door: Door) -> None:
    """Two queries sent together: the second (with a backslash) is refused while the first,
    which could change how text is read, has not finished."""
    raw = _raw(door)
    raw.send_raw(m.message(b"Q", m.cstring("SELECT set_config('work_mem', '2MB', false)"))
                 + m.message(b"Q", m.cstring("SELECT 'a\\' AS x")))
    first = raw.until_ready()
    second = raw.until_ready()
    assert not errors(first)
    assert errors(second)[0]["C"] == "42601"
    assert not errors(raw.query("SELECT 'a\\' AS x"))  # once it finished, it is fine
    raw.close()


def test_a_function_that_turns_off_standard_strings_ends_the_connection(door: Door) -> None:
    with door.admin() as admin:
        admin.execute("CREATE OR REPLACE FUNCTION sneaky() RETURNS void LANGUAGE plpgsql AS "
                      "$$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false);"
                      " END$$")
    door.gateway.hold_timeout = 20
    try:
        with door.connect() as connection:
            approver = door.approve_in_background()
            with pytest.raises(psycopg.OperationalError):
                connection.execute("SELECT sneaky()")
                connection.execute("SELECT 1")
            approver.join(10)
    finally:
        door.gateway.hold_timeout = 0.3


def test_a_silent_client_is_disconnected_after_the_login_timeout(
        tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> None:
    import socket

    door = make_door(tmp_path_factory.mktemp("silent"), postgres_server,
                     extra="  login_timeout: 0.5s\n", extra_at_top=True)
    try:
        with socket.create_connection(("127.0.0.1", door.port), timeout=5) as raw:
            raw.sendall(struct.pack("!i", 8))  # half a startup packet, then nothing
            started = time.monotonic()
            assert raw.recv(100) == b""  # closed by the gateway
            assert time.monotonic() - started < 4
    finally:
        stop_door(door)
