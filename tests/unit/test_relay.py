"""The reverse proxy's upstream client against scripted upstreams that misbehave.

Each upstream is a real TCP server in the test's event loop that answers with exactly the bytes
the test names, so every way an upstream can break an exchange (a bad status line, a close in
the middle of an answer, silence, a dropped keep-alive connection) is seen by the relay as it
would be in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stepguard.adapters.relay import Relay, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _answering(*answers: bytes, close: bool = True) -> Handler:
    """An upstream that reads one request head per answer and writes that answer's bytes."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await _read_head(reader)
            writer.write(answer)
            await writer.drain()
        if close:
            writer.close()
        else:
            await reader.read()  # hold the connection open until the relay closes it
    return handler


async def _whole(answer) -> bytes:  # type: ignore[no-untyped-def]
    data = b"".join(answer.body)
    if not answer.complete:
        data += b"".join([chunk async for chunk in answer.rest()])
    return data


def _run(scenario: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def test_a_status_line_that_is_not_http_is_an_upstream_error() -> None:
    async def scenario() -> str:
        server, url = await _serve(_answering(b"SMTP ready, not HTTP\r\n\r\n"))
        async with server:
            with pytest.raises(UpstreamError) as raised:
                await Relay(timeout=2).send(url, "GET", "/", [], b"")
            return str(raised.value)
    assert "not valid HTTP" in _run(scenario)  # type: ignore[operator]


def test_a_close_before_the_answer_head_is_an_upstream_error() -> None:
    async def scenario() -> None:
        server, url = await _serve(_answering(b"HTTP/1.1 200 OK\r\nContent-Le"))
        async with server:
            with pytest.raises(UpstreamError, match="mid-answer"):
                await Relay(timeout=2).send(url, "GET", "/", [], b"")
    _run(scenario)


def test_a_close_in_the_middle_of_a_framed_body_is_an_error_not_a_short_answer() -> None:
    """An answer that promised 100 bytes and sent 10 must not reach the client as complete."""
    async def scenario() -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        server, url = await _serve(_answering(head + b"0123456789"))
        async with server:
            answer = await Relay(timeout=2).send(url, "GET", "/", [], b"")
            assert answer.status == 200 and not answer.complete
            with pytest.raises(UpstreamError, match="mid-answer"):
                await _whole(answer)
    _run(scenario)


def test_a_close_delimited_body_ends_at_the_close() -> None:
    async def scenario() -> bytes:
        server, url = await _serve(_answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
                                              b"all of it, ended by the close"))
        async with server:
            return await _whole(await Relay(timeout=2).send(url, "GET", "/", [], b""))
    assert _run(scenario) == b"all of it, ended by the close"


def test_an_interim_100_continue_is_skipped_for_the_real_answer() -> None:
    async def scenario() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        server, url = await _serve(_answering(
            b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"))
        async with server:
            answer = await Relay(timeout=2).send(url, "POST", "/", [], b"x")
            return answer.status, answer.headers, await _whole(answer)
    status, headers, body = _run(scenario)  # type: ignore[misc]
    assert status == 201 and body == b"ok"
    assert (b"X-Interim", b"yes") not in headers  # the interim answer's headers are dropped


def test_a_silent_upstream_times_out_as_an_upstream_error() -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
        server, url = await _serve(silent)
        async with server:
            with pytest.raises(UpstreamError, match="TimeoutError"):
                await Relay(timeout=0.2).send(url, "GET", "/", [], b"")
    _run(scenario)


def test_a_header_with_a_line_break_is_never_sent() -> None:
    """Header smuggling: a value holding CRLF would start a second request upstream."""
    received: list[bytes] = []

    async def scenario() -> None:
        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.read())
        server, url = await _serve(record)
        async with server:
            with pytest.raises(UpstreamError, match="line break"):
                await Relay(timeout=1).send(url, "GET", "/", [(b"x-a", b"1\r\nGET /admin")], b"")
    _run(scenario)
    assert not any(b"/admin" in r for r in received)


def _closing_after_first(requests: list[bytes]) -> Handler:
    """Keep-alive for one answer, then the connection dies when the next request arrives —
    the race every pooled client meets when an upstream drops an idle connection."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await _read_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await writer.drain()
        head = await _read_head(reader)
        requests.append(head)
        writer.transport.abort()
    return handler


def test_a_get_on_a_dropped_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    requests: list[bytes] = []

    async def scenario() -> bytes:
        server, url = await _serve(_closing_after_first(requests))
        async with server:
            relay = Relay(timeout=2)
            assert await _whole(await relay.send(url, "GET", "/a", [], b"")) == b"first"
            return await _whole(await relay.send(url, "GET", "/b", [], b""))
    assert _run(scenario) == b"first"  # the fresh connection's first answer
    assert [r.split(b" ")[1] for r in requests] == [b"/a", b"/b", b"/b"]


def test_a_post_on_a_dropped_pooled_connection_is_not_sent_twice() -> None:
    """Not idempotent: the upstream may have acted on it, so the client gets an error."""
    requests: list[bytes] = []

    async def scenario() -> None:
        server, url = await _serve(_closing_after_first(requests))
        async with server:
            relay = Relay(timeout=2)
            await _whole(await relay.send(url, "GET", "/a", [], b""))
            with pytest.raises(UpstreamError):
                await relay.send(url, "POST", "/pay", [], b"amount=1")
    _run(scenario)
    assert [r.split(b" ")[1] for r in requests] == [b"/a", b"/pay"]


def test_a_head_answer_has_no_body_and_its_connection_is_not_reused() -> None:
    connections: list[int] = []

    async def scenario() -> list[tuple[int, bool, bytes]]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            while True:
                try:
                    await _read_head(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n")
                await writer.drain()
        server, url = await _serve(handler)
        async with server:
            relay = Relay(timeout=2)
            seen = []
            for _ in range(2):
                answer = await relay.send(url, "HEAD", "/", [], b"")
                seen.append((answer.status, answer.complete, b"".join(answer.body)))
            return seen
    assert _run(scenario) == [(200, True, b""), (200, True, b"")]
    assert len(connections) == 2


def test_with_no_idle_room_a_connection_is_closed_after_its_answer() -> None:
    connections: list[int] = []

    async def scenario() -> list[bytes]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            await _answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=False)(
                reader, writer)
        server, url = await _serve(handler)
        async with server:
            relay = Relay(timeout=2, max_idle=0)
            bodies = [await _whole(await relay.send(url, "GET", "/", [], b"")) for _ in range(2)]
            await relay.close()
            return bodies
    assert _run(scenario) == [b"ok", b"ok"]
    assert len(connections) == 2


async def _large_body(size: int, piece: int = 1 << 16) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        yield b"a" * min(piece, size - sent)
        sent += piece
    yield b""  # an empty piece is skipped, not sent as the chunked terminator


def test_a_streamed_request_body_arrives_whole_when_the_upstream_reads_slowly() -> None:
    """Back-pressure: the relay waits for the upstream's socket instead of buffering 8 MB."""
    size = 8 << 20

    async def scenario() -> tuple[int, bytes]:
        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_head(reader)
            await asyncio.sleep(0.3)  # the relay's writes fill the socket meanwhile
            total = 0
            while True:
                line = await reader.readuntil(b"\r\n")
                length = int(line.strip(), 16)
                if length == 0:
                    await reader.readuntil(b"\r\n")
                    break
                total += len(await reader.readexactly(length + 2)) - 2
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d"
                         % (len(str(total)), total))
            await writer.drain()
            writer.close()
        server, url = await _serve(slow)
        async with server:
            answer = await Relay(timeout=5).send(url, "PUT", "/", [], _large_body(size))
            return answer.status, await _whole(answer)
    assert _run(scenario) == (200, str(size).encode())


def test_an_upstream_that_hangs_up_during_a_streamed_body_is_an_upstream_error() -> None:
    async def scenario() -> None:
        async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_head(reader)
            writer.transport.abort()
        server, url = await _serve(rude)
        async with server:
            with pytest.raises(UpstreamError):
                await Relay(timeout=5).send(url, "PUT", "/", [], _large_body(32 << 20))
    _run(scenario)


def test_an_upstream_that_refuses_the_connection_is_an_upstream_error() -> None:
    """Nothing listens: the proxy must be able to answer 502, not fail with a raw OSError."""
    async def scenario() -> None:
        server, url = await _serve(_answering())
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError):
            await Relay(timeout=2).send(url, "GET", "/", [], b"")
    _run(scenario)


def test_an_upstream_that_closes_at_once_gets_no_streamed_body_and_is_an_error() -> None:
    async def scenario() -> None:
        async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        async def slow_body() -> AsyncIterator[bytes]:
            await asyncio.sleep(0.2)  # the close arrives before the first piece
            yield b"piece"
            yield b"another"

        server, url = await _serve(closes)
        async with server:
            with pytest.raises(UpstreamError):
                await Relay(timeout=2).send(url, "POST", "/", [], slow_body())
    _run(scenario)
