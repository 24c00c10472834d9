"""The reverse proxy's upstream client: HTTP/1.1 over asyncio streams, parsed by httptools.

Chosen by measurement (bench/relay_clients.py, CPU per relayed request in the gateway's own
process, 2 cores): httpx ~4,800 µs, aiohttp ~180 µs, asyncio + httptools ~60 µs. It does only
what a relay needs: a keep-alive pool per upstream, request bodies sent as they arrive
(`Content-Length` when known, else chunked), answers streamed back as they arrive (small
complete ones in one piece), and no cookie jar, redirects or decompression.

Retries: a request that met a dead pooled connection before any byte of an answer is retried
once on a fresh connection, but only when it is safe to send twice — an idempotent method with
a body still in hand. A held request's replay never is (it is sent exactly once).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
READ_SIZE = 65536


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the exchange before a full answer head."""


@dataclass
class Answer:
    """The upstream's answer: status and headers, the body read so far, and whether that is
    all of it (else `rest()` streams the remainder and then releases the connection)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: list[bytes]
    complete: bool
    connection: _Connection | None = None

    async def rest(self) -> AsyncGenerator[bytes, None]:
        connection = self.connection
        assert connection is not None
        try:
            while not connection.done:
                await connection.fill()
                while connection.chunks:
                    yield connection.chunks.pop(0)
        finally:
            connection.release()


@dataclass(eq=False)
class _Connection:
    pool: _Pool
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    head_done: bool = False
    done: bool = False
    seen_bytes: bool = False
    reusable: bool = False
    parser: httptools.HttpResponseParser | None = None

    def start(self) -> None:
        self.status, self.headers, self.chunks = 0, [], []
        self.head_done = self.done = self.seen_bytes = False
        self.parser = httptools.HttpResponseParser(self)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            self.headers = []  # an interim answer (100 Continue): wait for the real one
            return
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def on_message_complete(self) -> None:
        if self.head_done:
            assert self.parser is not None
            self.done = True
            self.reusable = self.parser.should_keep_alive()

    async def fill(self) -> None:
        """Read once from the upstream and parse it (EOF ends a close-delimited body)."""
        # asyncio.timeout, not wait_for: no task is created per read (3.11's wait_for wraps the
        # read in a new Task, a measurable share of a relayed request).
        async with asyncio.timeout(self.timeout):
            data = await self.reader.read(READ_SIZE)
        if not data:
            if self.head_done and not _framed(self.headers):
                self.done, self.reusable = True, False
                return
            raise UpstreamError("the upstream closed the connection mid-answer")
        self.seen_bytes = True
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"the upstream's answer is not valid HTTP: {exc}") from None

    def release(self) -> None:
        if self.done and self.reusable and not self.reader.at_eof():
            self.pool.idle.append(self)
        else:
            self.close()

    def close(self) -> None:
        self.writer.close()


@dataclass
class _Pool:
    host: str
    port: int
    tls: ssl.SSLContext | None
    idle: list[_Connection] = field(default_factory=list)


class Relay:
    """A keep-alive pool per upstream base URL; `send` relays one request."""

    def __init__(self, *, timeout: float, max_idle: int = 32) -> None:
        self.timeout, self.max_idle = timeout, max_idle
        self.pools: dict[str, _Pool] = {}

    async def send(self, base_url: str, method: str, target: str,
                   headers: list[tuple[bytes, bytes]], body: bytes | AsyncIterator[bytes],
                   *, retry: bool = True) -> Answer:
        pool = self._pool(base_url)
        head = _head(method, target, pool, headers, body)
        retry = retry and method in IDEMPOTENT and isinstance(body, bytes)
        while True:
            connection, reused = await self._connection(pool)
            try:
                return await self._exchange(connection, method, head, body)
            except (TimeoutError, OSError, UpstreamError) as exc:
                connection.close()
                if not (retry and reused and not connection.seen_bytes):
                    raise UpstreamError(str(exc) or type(exc).__name__) from None
                retry = False  # once, on a fresh connection

    async def close(self) -> None:
        for pool in self.pools.values():
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()

    def _pool(self, base_url: str) -> _Pool:
        pool = self.pools.get(base_url)
        if pool is None:
            parts = urlsplit(base_url)
            tls = ssl.create_default_context() if parts.scheme == "https" else None
            port = parts.port or (443 if tls else 80)
            pool = self.pools[base_url] = _Pool(parts.hostname or "", port, tls)
        return pool

    async def _connection(self, pool: _Pool) -> tuple[_Connection, bool]:
        while pool.idle:
            connection = pool.idle.pop()
            if not connection.reader.at_eof():
                connection.start()
                return connection, True
            connection.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(pool.host, pool.port, ssl=pool.tls,
                                    server_hostname=pool.host if pool.tls else None),
            self.timeout)
        connection = _Connection(pool, reader, writer, self.timeout)
        connection.start()
        return connection, False

    async def _exchange(self, connection: _Connection, method: str, head: bytes,
                        body: bytes | AsyncIterator[bytes]) -> Answer:
        writer = connection.writer
        if isinstance(body, bytes):
            writer.write(head + body)
        else:
            writer.write(head)
            async for chunk in body:
                if chunk:
                    writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        while not connection.head_done:
            await connection.fill()
        if method == "HEAD" or connection.status in (204, 304):
            connection.done, connection.reusable = True, False  # no body; do not reuse
        if len(self._idle_of(connection)) >= self.max_idle:
            connection.reusable = False
        body_so_far, connection.chunks = connection.chunks, []
        answer = Answer(connection.status, connection.headers, body_so_far, connection.done,
                        connection)
        if connection.done:
            connection.release()
            answer.connection = None
        return answer

    @staticmethod
    def _idle_of(connection: _Connection) -> list[_Connection]:
        return connection.pool.idle


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names or b"transfer-encoding" in names


def _head(method: str, target: str, pool: _Pool, headers: list[tuple[bytes, bytes]],
          body: bytes | AsyncIterator[bytes]) -> bytes:
    default_port = 443 if pool.tls else 80
    host = pool.host if pool.port == default_port else f"{pool.host}:{pool.port}"
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1"), f"host: {host}".encode("latin-1")]
    lines += [name + b": " + value for name, value in headers]
    if isinstance(body, bytes):
        if body or method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
            lines.append(b"content-length: %d" % len(body))
    else:
        lines.append(b"transfer-encoding: chunked")
    if any(_BREAK.search(line) for line in lines):
        raise UpstreamError("a header holds a line break or NUL: not relayed")
    return b"\r\n".join(lines) + b"\r\n\r\n"


_BREAK = re.compile(rb"[\r\n\0]")
