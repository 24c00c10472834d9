"""The door's transports: messages split across deliveries, many in one delivery, and flow
control (a client that does not read stops the door reading the server, and the door never
buffers the whole answer)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from stepguard.pgwire import messages as m
from stepguard.pgwire.pipe import Pipe
from stepguard.pgwire.session import Inbox
from tests.pgdoor.conftest import Door
from tests.pgdoor.rawclient import Raw, errors


def _connection(door: Door) -> object:
    deadline = time.monotonic() + 5
    while not door.gateway._connections and time.monotonic() < deadline:
        time.sleep(0.01)  # remembered just after its ReadyForQuery was written
    (connection,) = list(door.gateway._connections.values())
    return connection


def test_messages_split_at_every_byte_arrive_whole() -> None:
    stream = (m.message(b"P", m.cstring("") + m.cstring("SELECT 1") + b"\x00\x00")
              + m.message(b"S"))
    inbox, seen = Inbox(1 << 20), []
    for byte in stream:
        inbox.feed(bytes([byte]))
        while (found := inbox.next()) is not None:
            seen.append(found)
    assert [(chr(kind), raw) for kind, _, raw in seen] == [
        ("P", stream[:-5]), ("S", stream[-5:])]
    assert inbox.unread() == 0


def test_an_oversized_length_is_refused_from_its_header() -> None:
    inbox = Inbox(1024)
    inbox.feed(b"Q" + struct.pack("!i", 1 << 30))
    with pytest.raises(m.ProtocolViolation):
        inbox.next()


def test_send_is_the_transports_write_while_connected_and_refuses_before_and_after() -> None:
    sent: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            sent.append(data)

    pipe = Pipe()
    with pytest.raises(ConnectionResetError):
        pipe.send(b"early")
    pipe.connection_made(Transport())  # type: ignore[arg-type]
    pipe.send(b"one")
    pipe.write(b"two")
    assert sent == [b"one", b"two"]
    pipe.connection_lost(None)
    for write in (pipe.send, pipe.write):
        with pytest.raises(ConnectionResetError):
            write(b"late")
    assert sent == [b"one", b"two"]


def test_reading_stays_paused_while_any_reason_holds() -> None:
    calls: list[str] = []

    class Transport:
        def pause_reading(self) -> None:
            calls.append("pause")

        def resume_reading(self) -> None:
            calls.append("resume")

    pipe = Pipe()
    pipe.transport = Transport()  # type: ignore[assignment]
    pipe.reading("a", False)
    pipe.reading("b", False)
    pipe.reading("a", True)
    assert calls == ["pause"]
    pipe.reading("b", True)
    assert calls == ["pause", "resume"]


def test_a_pipelined_batch_in_one_write_is_answered_in_order(door: Door) -> None:
    raw = Raw(door.port, door.user_name, door.secret)
    batch = b""
    for i in range(50):
        batch += m.message(b"P", m.cstring("") + m.cstring(f"SELECT {i}") + b"\x00\x00")
        batch += m.message(b"B", b"\x00\x00" + b"\x00\x00" + b"\x00\x00" + b"\x00\x00")
        batch += m.message(b"E", b"\x00" + b"\x00\x00\x00\x00")
    batch += m.message(b"S")
    raw.send_raw(batch)
    rows = [body for kind, body in raw.until_ready() if kind == b"D"]
    assert [int(body[6:]) for body in rows] == list(range(50))
    raw.close()


def test_a_client_that_does_not_read_stops_the_door_reading_the_server(door: Door) -> None:
    raw = Raw(door.port, door.user_name, door.secret)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    raw.send(b"Q", m.cstring("SELECT repeat('x', 100000) FROM generate_series(1, 2000)"))
    connection = _connection(door)
    upstream = connection.upstream.pipe  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while "client full" not in upstream._pauses and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "client full" in upstream._pauses  # 200 MB answered; the door holds back
    transport = connection.client.transport  # type: ignore[attr-defined]
    assert transport.get_write_buffer_size() < 8 << 20
    seen = raw.until_ready()  # reading again: every row arrives, and the pause lifts
    assert sum(1 for kind, _ in seen if kind == b"D") == 2000
    assert not upstream._pauses
    raw.close()


def test_a_server_that_does_not_read_stops_the_door_reading_the_client(door: Door) -> None:
    """The upstream's write buffer fills (the server is held by a lock and reads nothing
    more): the door stops reading the client instead of buffering what it sends."""
    with door.admin() as admin:
        admin.execute("BEGIN")
        admin.execute("LOCK TABLE log IN ACCESS EXCLUSIVE MODE")
        raw = Raw(door.port, door.user_name, door.secret)
        raw.sock.settimeout(30)
        raw.send(b"Q", m.cstring("INSERT INTO log (note) VALUES ('held')"))
        connection = _connection(door)
        big = m.message(b"Q", m.cstring("SELECT '" + "y" * 1_000_000 + "'"))

        async def pauses() -> set[str]:
            return set(connection.client._pauses)  # type: ignore[attr-defined]

        sent = 0
        deadline = time.monotonic() + 20
        raw.sock.setblocking(False)
        while time.monotonic() < deadline:
            try:
                sent += raw.sock.send(big)
            except BlockingIOError:
                time.sleep(0.05)
            found = asyncio.run_coroutine_threadsafe(pauses(), door.loop).result(5)
            if "upstream full" in found:
                break
        assert "upstream full" in found
        raw.sock.setblocking(True)
        admin.execute("ROLLBACK")
    raw.close()


def round_trip(sql: str, value: bytes) -> bytes:
    """libpq's PQexecParams in one delivery: Parse and Bind of the unnamed statement and portal,
    Describe and Execute of the portal, Sync (what pgbench -M extended and psycopg send)."""
    bind = b"\x00\x00" + b"\x00\x00" + struct.pack("!hi", 1, len(value)) + value + b"\x00\x00"
    return (m.message(b"P", m.cstring("") + m.cstring(sql) + b"\x00\x00")
            + m.message(b"B", bind) + m.message(b"D", b"P\x00")
            + m.message(b"E", b"\x00" + bytes(4)) + m.message(b"S"))


def rows_of(seen: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [body[6:] for kind, body in seen if kind == b"D"]


def test_a_repeated_round_trip_is_answered_each_time_and_a_revocation_stops_the_next(
        door: Door) -> None:
    raw = Raw(door.port, door.user_name, door.secret)
    sql = "SELECT name FROM customers WHERE id = $1"
    allows = door.runtime.observer.decisions
    before = allows.value("allow", "default")
    for i in (1, 2, 3, 4, 5):
        raw.send_raw(round_trip(sql, str(i).encode()))
        assert rows_of(raw.until_ready()) == [f"c{i}".encode()]
    (connection,) = door.gateway._connections.values()
    assert connection._cycles  # the repeats took the round trip's short path
    deadline = time.monotonic() + 5  # counted at the end of the gateway loop's turn
    while allows.value("allow", "default") != before + 5:
        assert time.monotonic() < deadline, allows.value("allow", "default") - before
        time.sleep(0.01)
    raw.send_raw(round_trip(sql, b"oops"))  # the server's error: the next one still in step
    assert errors(raw.until_ready())[0]["C"] == "22P02"
    raw.send_raw(round_trip(sql, b"6"))
    assert rows_of(raw.until_ready()) == [b"c6"]
    door.runtime.store.sessions.revoke(door.session.id, now=door.clock.now)
    raw.send_raw(round_trip(sql, b"7"))
    seen: list[tuple[bytes, bytes]] = []
    with pytest.raises(ConnectionError):
        while True:
            seen.append(raw.read())
    assert [e["C"] for e in errors(seen)] == ["28000"] and not rows_of(seen)
    raw.close()


def test_a_round_trip_of_another_statement_or_shape_is_judged_on_its_own(door: Door) -> None:
    raw = Raw(door.port, door.user_name, door.secret)
    raw.send_raw(round_trip("SELECT name FROM customers WHERE id = $1", b"1"))
    assert rows_of(raw.until_ready()) == [b"c1"]
    # same shape, a statement that needs a step-up: held (a notice), not relayed
    raw.send_raw(round_trip("SELECT number FROM cards WHERE id = $1", b"1"))
    kind, body = raw.read()
    assert kind == b"N" and "Approve it at" in m.fields(body)["M"]
    raw.close()
    # a named portal in the same shape is read message by message, and judged
    raw = Raw(door.port, door.user_name, door.secret)
    named = round_trip("SELECT name FROM customers WHERE id = $1", b"2").replace(
        m.message(b"D", b"P\x00"), m.message(b"D", b"S\x00"))
    raw.send_raw(named)
    assert rows_of(raw.until_ready()) == [b"c2"]
    raw.send_raw(named)
    assert rows_of(raw.until_ready()) == [b"c2"]
    raw.close()


def test_an_error_on_the_round_trips_short_path_ends_the_connection_through_the_door(
        door: Door, caplog: pytest.LogCaptureFixture) -> None:
    """The round trip's short path writes to the server in the call that delivers the client's
    bytes: whatever it raises ends the connection the way the message-by-message path does
    (the connection's own end: a lost server quietly, anything else logged by the door), never
    as an error escaping to the event loop's transport."""
    raw = Raw(door.port, door.user_name, door.secret)
    sql = "SELECT name FROM customers WHERE id = $1"
    raw.send_raw(round_trip(sql, b"1"))
    assert rows_of(raw.until_ready()) == [b"c1"]
    (connection,) = door.gateway._connections.values()
    assert connection._cycles  # the next one takes the short path

    def gone(data: bytes) -> None:
        raise RuntimeError("unable to perform operation: the handler is closed")

    async def cut() -> None:
        connection.upstream.pipe.send = gone  # the server's side, broken

    asyncio.run_coroutine_threadsafe(cut(), door.loop).result(5)
    with caplog.at_level("ERROR"):
        raw.send_raw(round_trip(sql, b"2"))
        with pytest.raises(ConnectionError):
            while True:
                raw.read()
    assert "data_received" not in caplog.text and "postgres connection failed" in caplog.text
    assert not door.gateway._connections
    raw.close()
