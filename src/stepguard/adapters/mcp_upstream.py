"""Upstream MCP servers behind the MCP door: Streamable HTTP, or stdio programs Stepguard starts.

Both answer `send(method, body, headers)` with a `Reply` whose body is an async iterator of raw
bytes: the door hands them to the client as they come (nothing it need not inspect is
buffered). `tool_definition` asks the upstream for one tool's current definition (`tools/list`,
followed through its pages), so that an approval covers the tool as it is now described.

A stdio server serves one client: each MCP session (each `initialize`) starts its own process,
which ends on `DELETE`, when it exits, or after `mcp.session_idle` without traffic. Messages are
newline-delimited JSON on its stdin/stdout; a response goes to the POST that carries its id,
anything else the process says (progress, log messages, its own requests) to the client's GET
stream when one is open, else to the oldest open POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from stepguard.core.errors import StepguardError

SESSION_HEADER = "mcp-session-id"
FORWARDED_HEADERS = ("content-type", "accept", "mcp-protocol-version", "last-event-id")
LIST_PAGES = 50  # most tools/list pages followed to find one tool
LINE_LIMIT = 16 * 1024 * 1024  # longest stdio message accepted from an upstream


class UpstreamError(StepguardError):
    """The upstream could not be reached or answered nonsense."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]] = field(default=lambda: _nothing())


async def _nothing() -> None:
    return None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def sse_event(message: Mapping[str, Any]) -> bytes:
    return b"event: message\ndata: " + json.dumps(message, separators=(",", ":")).encode() + \
        b"\n\n"


def json_reply(status: int, message: Mapping[str, Any] | None) -> Reply:
    body = b"" if message is None else json.dumps(message).encode()
    headers = {"content-type": "application/json"} if message is not None else {}
    return Reply(status, headers, _once(body))


async def sse_messages(chunks: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    """The JSON messages of an SSE stream (`data:` lines of each event)."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                              if line.startswith(b"data:"))
            if data:
                with contextlib.suppress(ValueError):
                    yield json.loads(data)


class HttpUpstream:
    """A Streamable HTTP MCP server: one pooled HTTP client, responses streamed through."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0),
                                        limits=httpx.Limits(max_keepalive_connections=64))

    async def send(self, method: str, body: bytes | None, headers: Mapping[str, str],
                   session: str | None) -> Reply:
        sent = {k: v for k, v in headers.items() if k in FORWARDED_HEADERS}
        if session:
            sent[SESSION_HEADER] = session
        request = self.client.build_request(method, self.url, content=body, headers=sent)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the MCP server cannot be reached ({type(exc).__name__})") \
                from None
        kept = {k: response.headers[k] for k in ("content-type", SESSION_HEADER)
                if k in response.headers}
        return Reply(response.status_code, kept, response.aiter_raw(), response.aclose)

    async def request(self, message: Mapping[str, Any], headers: Mapping[str, str],
                      session: str | None) -> Any:
        """Send one request of Stepguard's own and return the upstream's response to it."""
        headers = {**headers, "content-type": "application/json",
                   "accept": "application/json, text/event-stream"}
        reply = await self.send("POST", json.dumps(message).encode(), headers, session)
        try:
            if reply.headers.get("content-type", "").startswith("text/event-stream"):
                async for item in sse_messages(reply.body):
                    if isinstance(item, dict) and item.get("id") == message["id"]:
                        return item
                return None
            data = b"".join([chunk async for chunk in reply.body])
            return json.loads(data) if reply.status == 200 and data else None
        finally:
            await reply.close()

    async def close(self) -> None:
        await self.client.aclose()


class _Process:
    """One stdio server process and the routes of its messages."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.waiting: dict[str, asyncio.Queue[Any]] = {}  # request id -> its POST's queue
        self.listener: asyncio.Queue[Any] | None = None  # the client's GET stream
        self.used = time.monotonic()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while True:
            try:
                line = await self.process.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                break  # a line above the limit: the stream cannot be trusted any more
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not a message (a stray print): dropped
            self._route(message)
        for queue in [*self.waiting.values(), self.listener]:
            if queue is not None:
                queue.put_nowait(None)

    def _route(self, message: Any) -> None:
        key = _id_key(message.get("id")) if isinstance(message, dict) else None
        is_response = isinstance(message, dict) and "method" not in message
        if is_response and key in self.waiting:
            self.waiting.pop(key).put_nowait(message)
            return
        target = self.listener or next(iter(self.waiting.values()), None)
        if target is not None:
            target.put_nowait(("event", message))

    async def write(self, message: Mapping[str, Any]) -> None:
        assert self.process.stdin is not None
        self.used = time.monotonic()
        self.process.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        try:
            await self.process.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            raise UpstreamError("the MCP server process has ended") from None

    def expect(self, request_id: Any) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.waiting[_id_key(request_id)] = queue
        return queue

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        self.reader.cancel()


class StdioUpstream:
    """A stdio MCP server program, one process per MCP session."""

    def __init__(self, command: list[str], *, env: Mapping[str, str], cwd: str,
                 timeout: float, idle: float) -> None:
        self.command, self.cwd, self.timeout, self.idle = command, cwd or None, timeout, idle
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        self.processes: dict[str, _Process] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def send(self, method: str, body: bytes | None, headers: Mapping[str, str],
                   session: str | None) -> Reply:
        if method == "DELETE":
            process = self.processes.pop(session or "", None)
            if process is not None:
                await process.stop()
            return json_reply(200 if process else 404, None)
        if method == "GET":
            return self._listen(session)
        message = json.loads(body or b"null")
        if isinstance(message, dict) and message.get("method") == "initialize":
            session = await self._start()
        process = self.processes.get(session or "")
        if process is None or process.process.returncode is not None:
            return json_reply(404, {"jsonrpc": "2.0", "id": None, "error": {
                "code": -32001, "message": "Session not found"}})
        if not isinstance(message, dict) or "method" not in message or "id" not in message:
            await process.write(message)
            return json_reply(202, None)
        queue = process.expect(message["id"])
        await process.write(message)
        reply = Reply(200, {"content-type": "text/event-stream", "cache-control": "no-store"},
                      self._events(process, queue, message["id"]))
        if message.get("method") == "initialize":
            reply.headers[SESSION_HEADER] = session or ""
        return reply

    async def _events(self, process: _Process, queue: asyncio.Queue[Any],
                      request_id: Any) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await asyncio.wait_for(queue.get(), self.timeout)
                if item is None:
                    return
                if isinstance(item, tuple):
                    yield sse_event(item[1])
                    continue
                yield sse_event(item)
                return
        except TimeoutError:
            yield sse_event({"jsonrpc": "2.0", "id": request_id, "error": {
                "code": -32603, "message": "the MCP server did not answer in time"}})
        finally:
            process.waiting.pop(_id_key(request_id), None)

    def _listen(self, session: str | None) -> Reply:
        process = self.processes.get(session or "")
        if process is None:
            return json_reply(404, None)
        if process.listener is not None:
            return json_reply(409, None)  # one GET stream per session (the spec's rule)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        process.listener = queue

        async def events() -> AsyncIterator[bytes]:
            try:
                while (item := await queue.get()) is not None:
                    yield sse_event(item[1] if isinstance(item, tuple) else item)
            finally:
                process.listener = None

        return Reply(200, {"content-type": "text/event-stream", "cache-control": "no-store"},
                     events())

    async def request(self, message: Mapping[str, Any], headers: Mapping[str, str],
                      session: str | None) -> Any:
        process = self.processes.get(session or "")
        if process is None:
            return None
        queue = process.expect(message["id"])
        await process.write(message)
        try:
            while True:
                item = await asyncio.wait_for(queue.get(), self.timeout)
                if not isinstance(item, tuple):
                    return item
        except TimeoutError:
            return None
        finally:
            process.waiting.pop(_id_key(message["id"]), None)

    async def _start(self) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env=self.env, cwd=self.cwd, limit=LINE_LIMIT)
        except OSError as exc:
            raise UpstreamError(f"the MCP server program cannot start ({exc.strerror})") \
                from None
        session = secrets.token_urlsafe(24)
        self.processes[session] = _Process(process)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap())
        return session

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.idle))
            now = time.monotonic()
            for session, process in list(self.processes.items()):
                ended = process.process.returncode is not None
                if ended or (now - process.used > self.idle and not process.waiting
                             and process.listener is None):
                    self.processes.pop(session, None)
                    await process.stop()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for process in list(self.processes.values()):
            await process.stop()
        self.processes.clear()


Upstream = HttpUpstream | StdioUpstream


async def tool_definition(upstream: Upstream, tool: str, headers: Mapping[str, str],
                          session: str | None) -> dict[str, Any] | None:
    """The tool's definition as the upstream lists it now; None when it does not list it."""
    cursor: str | None = None
    for _ in range(LIST_PAGES):
        params = {"cursor": cursor} if cursor else {}
        message = {"jsonrpc": "2.0", "id": "stepguard-list-" + secrets.token_hex(8),
                   "method": "tools/list", "params": params}
        answer = await upstream.request(message, headers, session)
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise UpstreamError("the MCP server did not list its tools")
        for item in result.get("tools") or []:
            if isinstance(item, dict) and item.get("name") == tool:
                return item
        cursor = result.get("nextCursor")
        if not isinstance(cursor, str) or not cursor:
            return None
    return None


def _id_key(value: Any) -> str:
    return json.dumps(value)
