"""The postgres door: PostgreSQL wire-protocol listeners judged by the one policy.

`PostgresGateway(runtime)` holds what every connection shares (the `Guard`, `StepUp`, database
tokens, one statement classifier per database, TLS contexts, the cancel keys handed out);
`serve()` runs the configured listeners until cancelled. See docs/databases.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import ssl
import struct
from pathlib import Path
from typing import Any

from stepguard.compiled import twin
from stepguard.config.schema import PostgresDatabase, PostgresListener
from stepguard.pgwire import session, turn
from stepguard.pgwire.classify import Classifier
from stepguard.pgwire.pipe import Pipe
from stepguard.pgwire.session import Connection
from stepguard.pgwire.tokens import TokenService
from stepguard.pgwire.turn import Turn
from stepguard.pgwire.upstream import send_cancel
from stepguard.service.guard import Guard
from stepguard.service.runtime import Runtime
from stepguard.service.stepup import StepUp

log = logging.getLogger("stepguard.postgres")
# The connection's code compiled when built (scripts/accelerate.py; the same source), else as is.
_CONNECTION: type[Connection] = twin(session).Connection
_TURN: type[Turn] = twin(turn).Turn


class PostgresGateway:
    def __init__(self, runtime: Runtime, *, guard: Guard | None = None,
                 stepup: StepUp | None = None, base: Path | None = None) -> None:
        self.rt = runtime
        self.guard = guard or Guard(runtime)
        self.stepup = stepup or StepUp(runtime)
        self.tokens = TokenService(runtime)
        self.base = base or Path.cwd()
        settings = runtime.config.postgres
        self.memo_ok = self.guard.memo_ok
        self.hold_timeout = settings.hold_timeout
        self.poll_interval = settings.poll_interval
        self._classifiers: dict[str, Classifier] = {}
        self._tls: dict[int, ssl.SSLContext | None] = {}
        self._connections: dict[tuple[int, int], Connection] = {}
        self.turn: Turn = _TURN(self.guard, runtime)  # allows given again, per loop turn
        self._tasks: set[asyncio.Task[Any]] = set()
        self.servers: list[asyncio.Server] = []

    # ------------------------------------------------------------------ listeners

    async def start(self) -> list[tuple[str, int]]:
        """Start every configured listener; the (host, port) each is bound to."""
        bound = []
        loop = asyncio.get_running_loop()
        for listener in self.rt.config.postgres.listeners:
            host, _, port = listener.listen.rpartition(":")
            server = await loop.create_server(functools.partial(self._pipe, listener),
                                              host.strip("[]"), int(port))
            self.servers.append(server)
            address = server.sockets[0].getsockname()
            bound.append((str(address[0]), int(address[1])))
            log.info("postgres listener on %s:%s", address[0], address[1])
        return bound

    async def serve(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def _pipe(self, listener: PostgresListener) -> Pipe:
        return Pipe(functools.partial(self._accept, listener))

    def _accept(self, listener: PostgresListener, client: Pipe) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(listener, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, listener: PostgresListener, client: Pipe) -> None:
        try:
            await _CONNECTION(self, listener, client).run()
        except Exception:  # one connection's bug never ends the listener or other sessions
            log.exception("postgres connection failed")
            client.close()

    # ------------------------------------------------------------------ shared parts

    def database(self, listener: PostgresListener, name: str) -> PostgresDatabase | None:
        return next((d for d in listener.databases if d.name == name), None)

    def classifier(self, database: PostgresDatabase) -> Classifier:
        found = self._classifiers.get(database.name)
        if found is None:
            found = self._classifiers[database.name] = Classifier(views=database.views)
        return found

    def tls_for(self, listener: PostgresListener) -> ssl.SSLContext | None:
        if not listener.tls_cert:
            return None
        key = id(listener)
        if key not in self._tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(self.base / listener.tls_cert),
                                    str(self.base / listener.tls_key) if listener.tls_key
                                    else None)
            self._tls[key] = context
        return self._tls[key]

    def remember(self, connection: Connection) -> None:
        self._connections[connection.key] = connection

    def forget(self, connection: Connection) -> None:
        if self._connections.get(connection.key) is connection:
            del self._connections[connection.key]

    async def cancel(self, body: bytes) -> None:
        """A CancelRequest: a held statement is refused; a running one is cancelled upstream."""
        if len(body) != 8:
            return
        pid, secret = struct.unpack("!ii", body)
        connection = None
        for key, candidate in self._connections.items():
            if key[0] == pid and hmac.compare_digest(struct.pack("!i", key[1]),
                                                     struct.pack("!i", secret)):
                connection = candidate
        if connection is None:
            return
        if connection.hold is not None:
            connection.hold.cancelled.set()
        upstream, database = connection.upstream, connection.database
        if upstream is not None and database is not None:
            await send_cancel(database, upstream.key, self.base)
