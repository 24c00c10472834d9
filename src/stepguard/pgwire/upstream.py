"""Stepguard's own connection to the real PostgreSQL: TLS when configured, the configured role's
sign-in (SCRAM-SHA-256, MD5 or cleartext as the server asks), and cancel requests.

The role's password never reaches the client: the client's sign-in ends at Stepguard, and the
upstream's authentication messages are answered here and never relayed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path

from stepguard.config.schema import PostgresDatabase
from stepguard.pgwire import messages as m
from stepguard.pgwire.pipe import Pipe
from stepguard.pgwire.scram import MECHANISM, ClientExchange, ScramError


class UpstreamError(ConnectionError):
    """The upstream could not be reached or refused Stepguard's sign-in."""


@dataclass
class Upstream:
    pipe: Pipe
    parameters: dict[str, str] = field(default_factory=dict)
    status: bytes = b"I"
    key: tuple[int, int] = (0, 0)

    def close(self) -> None:
        if not self.pipe.is_closing():
            self.pipe.write(m.message(b"X"))
            self.pipe.close()


def _address(database: PostgresDatabase) -> tuple[str, int]:
    host, _, port = database.upstream.rpartition(":")
    return host.strip("[]"), int(port)


def tls_context(database: PostgresDatabase, base: Path) -> ssl.SSLContext | None:
    if database.tls == "disable":
        return None
    if database.tls == "verify-full":
        context = ssl.create_default_context(cafile=str(base / database.ca_file)
                                             if database.ca_file else None)
    else:  # require: encrypted, the certificate not checked (libpq's sslmode=require)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _connect(database: PostgresDatabase, base: Path) -> Pipe:
    host, port = _address(database)
    _, pipe = await asyncio.get_running_loop().create_connection(Pipe, host, port)
    try:
        context = tls_context(database, base)
        if context is not None:
            pipe.write(struct.pack("!ii", 8, m.SSL_REQUEST))
            answer = await pipe.readexactly(1)
            if answer != b"S":
                raise UpstreamError("the upstream server does not offer TLS")
            if pipe.buffer:  # bytes before the handshake must not count after it
                raise UpstreamError("the upstream sent data before TLS")
            await pipe.start_tls(context, server_side=False, server_hostname=host)
    except BaseException:
        pipe.close()
        raise
    return pipe


async def open_upstream(database: PostgresDatabase, *, application_name: str,
                        extra: dict[str, str], timeout: float, base: Path) -> Upstream:
    try:
        async with asyncio.timeout(timeout):
            pipe = await _connect(database, base)
            upstream = Upstream(pipe)
            try:
                params = {"user": database.user,
                          "database": database.database or database.name,
                          "application_name": application_name, "client_encoding": "UTF8",
                          **extra}
                pipe.write(m.startup_message(params))
                await _authenticate(upstream, database)
                await _until_ready(upstream)
            except BaseException:
                pipe.close()
                raise
            return upstream
    except (OSError, TimeoutError, asyncio.IncompleteReadError, m.ProtocolViolation,
            ScramError, ssl.SSLError) as exc:
        raise UpstreamError(f"{database.upstream}: {exc or type(exc).__name__}") from None


async def _authenticate(upstream: Upstream, database: PostgresDatabase) -> None:
    exchange: ClientExchange | None = None
    while True:
        kind, body, _ = await m.read_message(upstream.pipe, 1 << 20)
        if kind == b"E":
            raise UpstreamError(f"sign-in refused: {m.fields(body).get('M', '')}")
        if kind != b"R":
            raise UpstreamError(f"unexpected message {kind!r} during sign-in")
        code = m.int32(body)
        if code == 0:
            return
        password = database.password
        if code == 3:
            _send(upstream, b"p", m.cstring(password))
        elif code == 5:
            inner = hashlib.md5((password + database.user).encode()).hexdigest()  # noqa: S324
            outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()  # noqa: S324
            _send(upstream, b"p", m.cstring("md5" + outer))
        elif code == 10:
            if MECHANISM.encode() not in body[4:].split(b"\x00"):
                raise UpstreamError("the upstream offers no SCRAM-SHA-256")
            exchange = ClientExchange(password)
            first = exchange.first().encode()
            _send(upstream, b"p", m.cstring(MECHANISM) + struct.pack("!i", len(first)) + first)
        elif code == 11 and exchange is not None:
            _send(upstream, b"p", exchange.final(body[4:].decode()).encode())
        elif code == 12 and exchange is not None:
            exchange.check(body[4:].decode())
        else:
            raise UpstreamError(f"unsupported authentication request {code}")


def _send(upstream: Upstream, kind: bytes, body: bytes) -> None:
    upstream.pipe.write(m.message(kind, body))


async def _until_ready(upstream: Upstream) -> None:
    while True:
        kind, body, _ = await m.read_message(upstream.pipe, 1 << 20)
        if kind == b"S":
            name, at = m.read_cstring(body, 0)
            value, _ = m.read_cstring(body, at)
            upstream.parameters[name] = value
        elif kind == b"K":
            upstream.key = struct.unpack("!ii", body[:8])
        elif kind == b"Z":
            upstream.status = body[:1]
            return
        elif kind == b"E":
            raise UpstreamError(f"start-up failed: {m.fields(body).get('M', '')}")
        # NoticeResponse and anything else during start-up is dropped


async def send_cancel(database: PostgresDatabase, key: tuple[int, int], base: Path) -> None:
    """Ask the upstream to cancel what the connection with `key` is running."""
    try:
        async with asyncio.timeout(5):
            pipe = await _connect(database, base)
            pipe.write(struct.pack("!iiii", 16, m.CANCEL_REQUEST, *key))
            await pipe.drain()
            pipe.close()
    except (OSError, TimeoutError, UpstreamError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
