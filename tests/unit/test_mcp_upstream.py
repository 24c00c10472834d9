"""The MCP door's upstreams when the MCP server misbehaves: a stdio program that prints noise,
crashes, stays silent, sends an endless line or pages its tool list forever, and an HTTP server
whose answers are event streams, errors or cut off. The door runs in this process; the stdio
server is a small scripted Python program started exactly as a configured one would be."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from stepguard.adapters import mcp_upstream
from stepguard.adapters.mcp_upstream import (
    HttpUpstream,
    StdioUpstream,
    UpstreamError,
    sse_messages,
    tool_definition,
)

SERVER = r"""
import json, sys, time
def say(obj):
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    msg = json.loads(line)
    method, ident = msg.get("method"), msg.get("id")
    if method == "initialize":
        say("debug: a stray print, not a message")
        say({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "hi"}})
        say({"jsonrpc": "2.0", "id": ident, "result": {"protocolVersion": "2025-06-18"}})
    elif method == "tools/list":
        page = (msg.get("params") or {}).get("cursor") or ""
        if page == "":
            say({"jsonrpc": "2.0", "id": ident,
                 "result": {"tools": [{"name": "other"}], "nextCursor": "p1"}})
        elif page == "p1":
            say({"jsonrpc": "2.0", "id": ident,
                 "result": {"tools": [{"name": "pay", "description": "pays"}],
                            "nextCursor": "loop"}})
        else:
            say({"jsonrpc": "2.0", "id": ident, "result": {"tools": [], "nextCursor": page}})
    elif method == "notify-listener":
        say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"n": 1}})
        say({"jsonrpc": "2.0", "id": ident, "result": {}})
    elif method == "silent":
        pass
    elif method == "crash":
        sys.exit(3)
    elif method == "shout":
        say({"jsonrpc": "2.0", "id": ident, "result": {"text": "x" * 5000}})
    elif method == "nonsense":
        say({"jsonrpc": "2.0", "id": ident, "result": "not an object"})
"""


def _stdio(timeout: float = 5.0, idle: float = 300.0) -> StdioUpstream:
    return StdioUpstream([sys.executable, "-c", SERVER], env={}, cwd="", timeout=timeout,
                         idle=idle)


def _request(method: str, ident: Any = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": {}}).encode()


async def _events(body: AsyncIterator[bytes]) -> list[Any]:
    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in body:
            yield chunk
    return [item async for item in sse_messages(chunks())]


async def _started(upstream: StdioUpstream) -> tuple[str, list[Any]]:
    reply = await upstream.send("POST", _request("initialize", 0), {}, None)
    return reply.headers["mcp-session-id"], await _events(reply.body)


def _run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def test_a_stdio_servers_stray_prints_are_dropped_and_its_notifications_reach_the_post() -> None:
    async def scenario() -> list[Any]:
        upstream = _stdio()
        try:
            return (await _started(upstream))[1]
        finally:
            await upstream.close()
    events = _run(scenario)
    assert [e.get("method") or e.get("result") for e in events] == [
        "notifications/message", {"protocolVersion": "2025-06-18"}]


def test_a_crashed_stdio_server_ends_the_call_and_then_its_session() -> None:
    async def scenario() -> tuple[list[Any], int]:
        upstream = _stdio()
        try:
            session, _ = await _started(upstream)
            crashed = await upstream.send("POST", _request("crash"), {}, session)
            events = await _events(crashed.body)
            await upstream.processes[session].process.wait()
            after = await upstream.send("POST", _request("initialize-not"), {}, session)
            return events, after.status
        finally:
            await upstream.close()
    events, status = _run(scenario)
    assert events == []  # the call's stream ends without an answer: nothing was made up
    assert status == 404  # the session died with its process


def test_a_silent_stdio_server_gives_a_json_rpc_error_in_time() -> None:
    async def scenario() -> list[Any]:
        upstream = _stdio(timeout=0.3)
        try:
            session, _ = await _started(upstream)
            reply = await upstream.send("POST", _request("silent", 7), {}, session)
            events = await _events(reply.body)
            assert await upstream.request({"jsonrpc": "2.0", "id": 8, "method": "silent"}, {},
                                          session) is None
            return events
        finally:
            await upstream.close()
    assert _run(scenario) == [{"jsonrpc": "2.0", "id": 7, "error": {
        "code": -32603, "message": "the MCP server did not answer in time"}}]


def test_a_line_above_the_limit_ends_the_stream_it_came_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream cannot make the door buffer without bound: the session's stream ends."""
    monkeypatch.setattr(mcp_upstream, "LINE_LIMIT", 1024)

    async def scenario() -> list[Any]:
        upstream = _stdio()
        try:
            session, _ = await _started(upstream)
            reply = await upstream.send("POST", _request("shout"), {}, session)
            return await _events(reply.body)
        finally:
            await upstream.close()
    assert _run(scenario) == []


def test_a_program_that_cannot_start_is_an_upstream_error() -> None:
    async def scenario() -> None:
        upstream = StdioUpstream(["/nonexistent/mcp-server"], env={}, cwd="", timeout=1, idle=1)
        with pytest.raises(UpstreamError, match="cannot start"):
            await upstream.send("POST", _request("initialize"), {}, None)
    _run(scenario)


def test_the_get_stream_gets_the_servers_notifications_and_is_one_per_session() -> None:
    async def scenario() -> tuple[int, int, Any, list[Any], int]:
        upstream = _stdio()
        try:
            session, _ = await _started(upstream)
            unknown = await upstream.send("GET", None, {}, "no-such-session")
            listen = await upstream.send("GET", None, {}, session)
            second = await upstream.send("GET", None, {}, session)
            call = await upstream.send("POST", _request("notify-listener", 3), {}, session)
            answered = await _events(call.body)
            notified = await anext(aiter(listen.body))
            deleted = await upstream.send("DELETE", None, {}, session)
            return unknown.status, second.status, notified, answered, deleted.status
        finally:
            await upstream.close()
    unknown, second, notified, answered, deleted = _run(scenario)
    assert unknown == 404 and second == 409 and deleted == 200
    assert b"notifications/progress" in notified
    assert answered == [{"jsonrpc": "2.0", "id": 3, "result": {}}]  # the POST got only its answer


def test_an_idle_stdio_session_is_reaped() -> None:
    async def scenario() -> tuple[int, bool]:
        upstream = _stdio(idle=0.1)
        try:
            session, _ = await _started(upstream)
            process = upstream.processes[session].process
            await asyncio.sleep(0.5)
            after = await upstream.send("POST", _request("tools/list"), {}, session)
            return after.status, process.returncode is not None
        finally:
            await upstream.close()
    assert _run(scenario) == (404, True)


def test_tool_definition_follows_pages_and_gives_up_on_an_endless_list() -> None:
    async def scenario() -> tuple[Any, Any]:
        upstream = _stdio()
        try:
            session, _ = await _started(upstream)
            found = await tool_definition(upstream, "pay", {}, session)
            missing = await tool_definition(upstream, "absent", {}, session)  # pages forever
            with pytest.raises(UpstreamError, match="did not list"):
                await tool_definition(upstream, "pay", {}, "no-such-session")
            return found, missing
        finally:
            await upstream.close()
    found, missing = _run(scenario)
    assert found == {"name": "pay", "description": "pays"}
    assert missing is None  # 50 pages, then given up: an endless list cannot hold the door


def test_tool_definition_refuses_a_tool_list_that_is_not_one() -> None:
    class Nonsense:
        async def request(self, message: Any, headers: Any, session: Any) -> Any:
            return {"jsonrpc": "2.0", "id": message["id"], "result": "not an object"}

    with pytest.raises(UpstreamError, match="did not list its tools"):
        _run(lambda: tool_definition(Nonsense(), "pay", {}, None))  # type: ignore[arg-type]


# --- Streamable HTTP upstream --------------------------------------------------------------


async def _http_upstream(answer: bytes) -> tuple[asyncio.Server, str]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"


def _sse(*events: dict[str, Any]) -> bytes:
    body = b"".join(b"event: message\r\ndata: " + json.dumps(e).encode() + b"\r\n\r\n"
                    for e in events)
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body


def _ask(answer: bytes) -> Any:
    async def scenario() -> Any:
        server, url = await _http_upstream(answer)
        async with server:
            upstream = HttpUpstream(url, timeout=2)
            try:
                return await upstream.request({"jsonrpc": "2.0", "id": "mine", "method": "x"},
                                              {}, "session-1")
            finally:
                await upstream.close()
    return _run(scenario)


def test_an_http_upstreams_event_stream_answer_is_found_among_other_events() -> None:
    other = {"jsonrpc": "2.0", "method": "notifications/progress"}
    mine = {"jsonrpc": "2.0", "id": "mine", "result": {"ok": True}}
    assert _ask(_sse(other, {"jsonrpc": "2.0", "id": "theirs", "result": {}}, mine)) == mine
    assert _ask(_sse(other)) is None  # the stream ended without the answer


def test_an_http_upstreams_error_status_is_no_answer() -> None:
    body = b'{"jsonrpc": "2.0", "id": "mine", "result": {"ok": true}}'
    assert _ask(b"HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)) is None


def test_an_http_answer_cut_off_mid_body_is_an_upstream_error() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"a"
    with pytest.raises(UpstreamError, match="broke its answer off"):
        _ask(cut)


def test_event_stream_comments_and_split_events_are_read_right() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b": keep-alive\r\n\r\n", b"event: message\ndata: {\"a\"", b": 1}\n\n",
                      b"data: not json\n\n", b"data: [2]\n\n"):
            yield chunk

    async def scenario() -> list[Any]:
        return [item async for item in sse_messages(chunks())]
    assert _run(scenario) == [{"a": 1}, [2]]  # a comment is no message; bad JSON is skipped


def test_stepguards_own_request_skips_the_servers_notifications_for_its_answer() -> None:
    async def scenario() -> Any:
        upstream = _stdio()
        try:
            session, _ = await _started(upstream)
            return await upstream.request({"jsonrpc": "2.0", "id": "own-1",
                                           "method": "notify-listener"}, {}, session)
        finally:
            await upstream.close()
    assert _run(scenario) == {"jsonrpc": "2.0", "id": "own-1", "result": {}}
