"""The reverse proxy's upstream client: HTTP/1.1 on an asyncio protocol, parsed by httptools.

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
HEADS_REMEMBERED = 4096  # request heads kept (then started afresh)
BUFFER_LIMIT = 1 << 18  # bytes of an answer held unread before the upstream is paused


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
            while True:
                while connection.chunks:
                    yield connection.take()
                if connection.done:
                    return
                await connection.fill()
        finally:
            connection.release()


class _Connection(asyncio.Protocol):
    """One upstream connection: bytes are parsed as they arrive (`data_received`), and the
    relay waits for the parser's progress (`fill`) — no stream reader, no task per read."""

    status: int
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]

    def __init__(self, pool: _Pool, timeout: float) -> None:
        self.pool, self.timeout = pool, timeout
        self.transport: asyncio.Transport | None = None
        self.eof = False  # the upstream closed (or the connection was lost)
        self._events = self._seen = 0  # deliveries from the transport, and those looked at
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._buffered = 0
        self._reading_paused = False
        self.start()

    def start(self) -> None:
        self.status, self.headers, self.chunks = 0, [], []
        self.head_done = self.done = self.seen_bytes = self.reusable = False
        self.error = ""
        self._buffered = 0
        self.parser = httptools.HttpResponseParser(self)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (TCP/TLS)

    def data_received(self, data: bytes) -> None:
        self.seen_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = f"the upstream's answer is not valid HTTP: {exc}"
        if self._buffered > BUFFER_LIMIT and self.transport is not None:
            self.transport.pause_reading()  # the client reads slower than the upstream sends
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_exception(ConnectionResetError("the upstream connection was lost"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            self.headers = []  # an interim answer (100 Continue): wait for the real one
            return
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.chunks.append(bytes(data))
        self._buffered += len(data)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True
            self.reusable = self.parser.should_keep_alive()

    # the relay's side
    def _wake(self) -> None:
        self._events += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes:
        chunk: bytes = self.chunks.pop(0)
        self._buffered -= len(chunk)
        return chunk

    @property
    def must_drain(self) -> bool:
        """`drain` has something to do: the upstream closed, or its socket buffer is full."""
        return self.eof or self._writable is not None

    async def drain(self) -> None:
        """Wait while the upstream's socket buffer is full (request bodies stream in pace)."""
        if self.eof:
            raise ConnectionResetError("the upstream closed the connection")
        if self._writable is not None:
            await self._writable

    async def fill(self) -> None:
        """Wait until the upstream delivered something since the last look, then judge it:
        an invalid answer, or a close before the answer ended (which ends a close-delimited
        body), raise `UpstreamError`; no delivery within the timeout raises `TimeoutError`."""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._events == self._seen:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._seen = self._events
        if self.error:
            raise UpstreamError(self.error)
        if self.eof and not self.done:
            if self.head_done and not _framed(self.headers):
                self.done = True
                return
            raise UpstreamError("the upstream closed the connection mid-answer")

    def release(self) -> None:
        if self.done and self.reusable and not self.eof and not self.chunks:
            self._seen = self._events
            self.pool.idle.append(self)
        else:
            self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


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
        self._heads: dict[tuple[object, ...], bytes] = {}

    async def send(self, base_url: str, method: str, target: str,
                   headers: list[tuple[bytes, bytes]], body: bytes | AsyncIterator[bytes],
                   *, retry: bool = True) -> Answer:
        pool = self._pool(base_url)
        head = self._head(base_url, method, target, pool, headers, body)
        retry = retry and method in IDEMPOTENT and isinstance(body, bytes)
        while True:
            connection, reused = _pooled(pool), True
            if connection is None:
                try:
                    connection, reused = await self._connect(pool), False
                except (TimeoutError, OSError) as exc:  # refused, unresolvable, no answer
                    raise UpstreamError("the upstream cannot be reached: "
                                        f"{str(exc) or type(exc).__name__}") from None
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

    def _head(self, base_url: str, method: str, target: str, pool: _Pool,
              headers: list[tuple[bytes, bytes]], body: bytes | AsyncIterator[bytes]) -> bytes:
        """The request head, remembered for a body of known length (the proxy hands the same
        header objects for the same request: their hashes are cached, the key is cheap)."""
        if not isinstance(body, bytes):
            return _head(method, target, pool, headers, body)
        key = (base_url, method, target, len(body), *headers)
        found = self._heads.get(key)
        if found is None:
            found = _head(method, target, pool, headers, body)
            if len(self._heads) >= HEADS_REMEMBERED:
                self._heads.clear()
            self._heads[key] = found
        return found

    def _pool(self, base_url: str) -> _Pool:
        pool = self.pools.get(base_url)
        if pool is None:
            parts = urlsplit(base_url)
            tls = ssl.create_default_context() if parts.scheme == "https" else None
            port = parts.port or (443 if tls else 80)
            pool = self.pools[base_url] = _Pool(parts.hostname or "", port, tls)
        return pool

    async def _connect(self, pool: _Pool) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(pool, self.timeout), pool.host, pool.port,
                                   ssl=pool.tls, server_hostname=pool.host if pool.tls else None),
            self.timeout)
        return connection

    async def _exchange(self, connection: _Connection, method: str, head: bytes,
                        body: bytes | AsyncIterator[bytes]) -> Answer:
        transport = connection.transport
        assert transport is not None
        if isinstance(body, bytes):
            transport.write(head + body)
        else:
            transport.write(head)
            async for chunk in body:
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    await connection.drain()
            transport.write(b"0\r\n\r\n")
        if connection.must_drain:  # (no coroutine for the common case)
            await connection.drain()
        while not connection.head_done:
            await connection.fill()
        if method == "HEAD" or connection.status in (204, 304):
            connection.done, connection.reusable = True, False  # no body; do not reuse
        if len(self._idle_of(connection)) >= self.max_idle:
            connection.reusable = False
        body_so_far, connection.chunks, connection._buffered = connection.chunks, [], 0
        answer = Answer(connection.status, connection.headers, body_so_far, connection.done,
                        connection)
        if connection.done:
            connection.release()
            answer.connection = None
        return answer

    @staticmethod
    def _idle_of(connection: _Connection) -> list[_Connection]:
        return connection.pool.idle


def _pooled(pool: _Pool) -> _Connection | None:
    """An idle connection of the pool still open, started afresh; None when there is none."""
    while pool.idle:
        connection = pool.idle.pop()
        if not connection.eof:
            connection.start()
            return connection
        connection.close()
    return None


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
