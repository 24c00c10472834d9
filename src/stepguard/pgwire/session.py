"""One client connection through the postgres door: startup, sign-in, then every message judged
or relayed.

Both sides are asyncio protocols (`Pipe`). In the relay, each delivery from the client is
handled in the call that delivers it, as a batch: Query, Parse, Bind and Execute are read, every
other message is relayed as its own bytes, and the batch goes upstream in one write. A message
is handed to a coroutine only when its decision is not already known on the event loop (a
decision that needs the store, a step-up); the messages after it wait for it, in order. The
server's deliveries are scanned in the same way: only the answers that change what the gateway
tracks are read. A statement is judged when it would run
(a Query, an Execute of a portal), against the statement the server will actually run (see
`tracking`). A refused message is replaced by one the server is sure to fail, so the server's
transaction state and its skip-to-Sync behaviour are exactly PostgreSQL's own; the server's
error for it is replaced by Stepguard's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from stepguard.config.schema import PostgresDatabase, PostgresListener
from stepguard.core.context import RequestContext
from stepguard.core.decision import Decision, Outcome
from stepguard.core.errors import StepguardError, StoreUnavailable
from stepguard.pgwire import messages as m
from stepguard.pgwire.classify import Classifier, Statement, Unparseable, statement_context
from stepguard.pgwire.pipe import Pipe
from stepguard.pgwire.roundtrip import CYCLE_TAIL, round_trip, whole_answer
from stepguard.pgwire.scram import MECHANISM, ScramError, ServerExchange, Verifier
from stepguard.pgwire.tracking import ALL, DESCRIBE, EXECUTE, REMOVE, SYNC, Expect, Portal, Tracker
from stepguard.pgwire.turn import Turn
from stepguard.pgwire.upstream import Upstream, UpstreamError, open_upstream
from stepguard.service.guard import Answer, Check
from stepguard.service.stepup import HeldRequest
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.storage.sql_db_tokens import DbTokenRecord

if TYPE_CHECKING:
    from stepguard.pgwire.gateway import PostgresGateway

log = logging.getLogger("stepguard.postgres")

REFUSED_SQL = "STEPGUARD REFUSED THIS STATEMENT"  # a syntax error: the server fails it for us
_REFUSAL_PARSE = m.message(b"P", m.cstring("") + m.cstring(REFUSED_SQL) + b"\x00\x00")
_REFUSAL_QUERY = m.message(b"Q", m.cstring(REFUSED_SQL))
_READ_AHEAD = 1 << 20  # bytes read ahead of a message that waits for its decision
_MEMO_SIZE = 1024  # plain allows remembered per connection
_PARSED_SIZE = 256  # Parse messages remembered per connection (their text, classified)
_TRACKED = frozenset(b"EZS123CsI")  # server messages the tracker reads
_LENGTH = struct.Struct("!I")
_PASS_PARAMS = {"datestyle": "DateStyle", "timezone": "TimeZone", "intervalstyle": "IntervalStyle",
                "extra_float_digits": "extra_float_digits"}


class Closed(Exception):
    """The connection is over (client gone, fatal error sent)."""


@dataclass(slots=True)
class Identity:
    user: UserRecord
    token: DbTokenRecord
    session_key: str = ""


@dataclass(slots=True)
class Hold:
    """A statement waiting for its step-up."""

    challenge: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class Inbox:
    """Typed messages from the client, taken from what arrived; lengths checked before any
    allocation. The last delivery is kept as it came when everything before it was read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer: bytes | bytearray = b""
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos >= len(self.buffer):
            self.buffer, self.pos = data, 0
            return
        if self.pos or not isinstance(self.buffer, bytearray):
            self.buffer = bytearray(memoryview(self.buffer)[self.pos:])
            self.pos = 0
        self.buffer += data

    def unread(self) -> int:
        return len(self.buffer) - self.pos

    def next(self) -> tuple[int, bytes, bytes] | None:
        """(type, body, raw) of the next complete message, or None."""
        buffer, pos = self.buffer, self.pos
        if len(buffer) < pos + 5:
            return None
        length = _LENGTH.unpack_from(buffer, pos + 1)[0]
        if length < 4 or length - 4 > self.limit:
            raise m.ProtocolViolation(f"invalid message length {length}")
        end = pos + length + 1
        if len(buffer) < end:
            return None
        self.pos = end
        return buffer[pos], bytes(buffer[pos + 5:end]), bytes(buffer[pos:end])


class Connection:
    def __init__(self, gateway: PostgresGateway, listener: PostgresListener,
                 client: Pipe) -> None:
        self.gw = gateway
        self.turn: Turn = gateway.turn  # what this turn of the event loop remembers (shared)
        self.rt = gateway.rt
        self.listener = listener
        self.client = client
        self.client_ip = client.peer()
        self.inbox = Inbox(self.rt.config.postgres.max_message)
        self.upstream: Upstream | None = None
        self.database: PostgresDatabase | None = None
        self.classifier: Classifier | None = None
        self.identity: Identity | None = None
        self.tracker = Tracker()
        self.status = b"I"
        self.skipping = False  # after a refusal in the extended protocol: until Sync
        self.unsettled_until = 0  # syncs seen before settings are known again
        self.hold: Hold | None = None
        self.key = (secrets.randbits(31), secrets.randbits(31))
        self.out = bytearray()
        self.application = ""
        self._memo: dict[int, tuple[Statement, tuple[int, int], Answer]] = {}
        self._cycles: dict[bytes, tuple[Statement, Expect]] = {}
        self._parsed: dict[bytes, tuple[str, str, tuple[Statement, ...] | str]] = {}
        self._server_buffer = bytearray()
        self._ended: asyncio.Future[BaseException] | None = None
        self._slow_task: asyncio.Task[None] | None = None
        self._slow_work: Any = None
        self._gone: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.rt.config.postgres.login_timeout):
                params = await self._startup()
                if params is None:
                    return
                await self._sign_in(params)
            await self._relay()
        except UpstreamError as exc:  # before ConnectionError, its base class
            log.warning("postgres upstream: %s", exc)
            await self._fatal("08006", "Stepguard could not reach the database.")
        except (Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except m.ProtocolViolation as exc:
            await self._fatal("08P01", str(exc))
        except StoreUnavailable:
            await self._fatal("08006", "Stepguard cannot check this session right now "
                                       "(its store is unavailable); try again shortly.")
        except (ssl.SSLError, TimeoutError):
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        self.gw.forget(self)
        if self.hold is not None:
            self.hold.cancelled.set()
        if self.upstream is not None:
            self.upstream.close()
        self.client.close()

    async def _fatal(self, code: str, text: str, hint: str = "") -> None:
        with contextlib.suppress(Exception):
            self.client.write(m.error(code, text, hint=hint, severity="FATAL"))
            await asyncio.wait_for(self.client.drain(), 1.0)

    # ------------------------------------------------------------------ startup

    async def _startup(self) -> dict[str, str] | None:
        tls = False
        while True:
            code, body = await m.read_startup(self.client)
            if code == m.CANCEL_REQUEST:
                await self.gw.cancel(body)
                return None
            if code in (m.SSL_REQUEST, m.GSSENC_REQUEST) and not tls:
                if self.client.buffer:  # bytes sent before TLS must not count after it
                    raise m.ProtocolViolation("data sent after SSLRequest before TLS")
                context = self.gw.tls_for(self.listener) if code == m.SSL_REQUEST else None
                self.client.write(b"S" if context else b"N")
                if context is not None:
                    await self.client.start_tls(context, server_side=True)
                    tls = True
                continue
            if code >> 16 != 3:
                raise m.ProtocolViolation("unsupported frontend protocol")
            params = m.parse_startup(body)
            if self.listener.require_tls and not tls:
                await self._fatal("28000", "This gateway requires TLS (sslmode=require).")
                return None
            extensions = [k for k in params if k.startswith("_pq_.")]
            if code & 0xFFFF or extensions:
                self.client.write(m.negotiate_version(0, extensions))
            return params

    async def _sign_in(self, params: dict[str, str]) -> None:
        user_name, database = params.get("user", ""), params.get("database", "")
        if params.get("replication", "false").lower() not in ("false", "0", "no", "off"):
            raise m.ProtocolViolation("replication connections are not supported")
        found = self.gw.tokens.lookup(user_name) if user_name else None
        verifier = Verifier.decode(found[0].verifier) if found else self.gw.tokens.decoy(user_name)
        if not await self._scram(verifier) or found is None:
            self.rt.record(kind="session", subject=found[1].id if found else "",
                           outcome="db_login_failed", detail={"database": database[:64]})
            await self._fatal("28P01", f'password authentication failed for user "{user_name}"')
            raise Closed()
        token, user = found
        self.database = self.gw.database(self.listener, database)
        if self.database is None:
            await self._fatal("3D000", f'database "{database}" is not served by this gateway')
            raise Closed()
        self.identity = Identity(user, token)
        if await self._session() is None:
            await self._fatal("28000", "The Stepguard session this token belongs to has ended. "
                              "Sign in again and issue a new database token.")
            raise Closed()
        self.classifier = self.gw.classifier(self.database)
        dropped = [k for k in params if k.lower() not in _PASS_PARAMS and k not in (
            "user", "database", "application_name", "client_encoding")]
        if not _utf8(params.get("client_encoding", "UTF8")):
            await self._fatal("22023", "Stepguard speaks UTF8 only (client_encoding=UTF8).")
            raise Closed()
        self.application = params.get("application_name", "")[:64]
        upstream_params = {_PASS_PARAMS[k.lower()]: v for k, v in params.items()
                           if k.lower() in _PASS_PARAMS}
        self.upstream = await open_upstream(
            self.database, application_name=user.username, extra=upstream_params,
            timeout=self.rt.config.postgres.connect_timeout, base=self.gw.base)
        self._check_settings(self.upstream.parameters)
        self.client.write(m.auth(0))
        for name, value in self.upstream.parameters.items():
            self.client.write(m.parameter_status(name, value))
        self.client.write(m.backend_key(*self.key))
        if dropped:
            self.client.write(m.notice("Stepguard ignored these connection parameters: "
                                       + ", ".join(sorted(dropped))[:500]))
        self.client.write(m.ready(self.upstream.status))
        await self.client.drain()
        self.gw.remember(self)
        self.rt.record(kind="session", subject=user.id, session_id=token.session_id,
                       outcome="db_login", request={"host": self.database.name,
                                                    "client_ip": self.client_ip},
                       detail={"token": token.id})

    async def _scram(self, verifier: Verifier) -> bool:
        self.client.write(m.auth(10, m.cstring(MECHANISM) + b"\x00"))
        await self.client.drain()
        exchange = ServerExchange(verifier)
        try:
            kind, body, _ = await m.read_message(self.client, 4096)
            if kind != b"p":
                raise m.ProtocolViolation("expected a SASL response")
            mechanism, data = m.sasl_initial(body)
            if mechanism != MECHANISM:
                raise m.ProtocolViolation("unsupported SASL mechanism")
            self.client.write(m.auth(11, exchange.first(data.decode("utf-8")).encode()))
            await self.client.drain()
            kind, body, _ = await m.read_message(self.client, 4096)
            if kind != b"p":
                raise m.ProtocolViolation("expected a SASL response")
            final = exchange.final(body.decode("utf-8"))
        except (ScramError, UnicodeDecodeError):
            return False
        self.client.write(m.auth(12, final.encode()))
        return True

    async def _session(self) -> SessionRecord | None:
        """The live portal session the token is bound to (its current token hash cached)."""
        assert self.identity is not None
        session = await asyncio.to_thread(self.rt.store.sessions.get,
                                          self.identity.token.session_id)
        if session is None or session.revoked_at is not None:
            return None
        loaded = await asyncio.to_thread(self.gw.guard.load_key, session.token_hash)
        if loaded is None:
            return None
        self.identity.session_key = session.token_hash
        return loaded.record

    def _check_settings(self, parameters: dict[str, str]) -> None:
        if parameters.get("standard_conforming_strings", "on") != "on" or not _utf8(
                parameters.get("client_encoding", "UTF8")):
            raise m.ProtocolViolation("the server's string settings changed "
                                      "(standard_conforming_strings, client_encoding)")

    # ------------------------------------------------------------------ relaying

    async def _relay(self) -> None:
        """Relay until either side ends: the protocols' callbacks do the work; this waits for
        the end (the exception that ends the connection)."""
        assert self.upstream is not None
        self._ended = asyncio.get_running_loop().create_future()
        client, server = self.client, self.upstream.pipe
        early_server, early_client = server.take(), client.take()
        server.relay(self._server_data, self._server_eof, self._client_writable_upstream)
        client.relay(self._client_data, self._client_eof, self._server_writable_client)
        try:
            if early_server:
                self._server_data(early_server)
            if server.eof:
                self._server_eof()
            if early_client:
                self._client_data(early_client)
            if client.eof:
                self._client_eof()
            ended = await self._ended
        finally:
            client.detach()
            server.detach()
            task = self._slow_task
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            work, self._slow_work = self._slow_work, None
            if work is not None:
                work.close()  # never started: nothing of it ran
        if not isinstance(ended, Closed | ConnectionError | asyncio.IncompleteReadError):
            raise ended

    def _end(self, exc: BaseException) -> None:
        ended = self._ended
        if ended is not None and not ended.done():
            ended.set_result(exc)

    # flow control: a side whose writes back up stops the reading of the other
    def _client_writable_upstream(self, writable: bool) -> None:
        self.client.reading("upstream full", writable)

    def _server_writable_client(self, writable: bool) -> None:
        assert self.upstream is not None
        self.upstream.pipe.reading("client full", writable)

    # ------------------------------------------------------------------ the server's side

    def _server_data(self, data: bytes) -> None:
        """Relay the server's bytes as they are; only the messages that change what the
        gateway tracks are read (rows and descriptions are skipped by their length)."""
        buffer = self._server_buffer
        view: bytes | bytearray = data
        if buffer:
            buffer += data
            view = buffer
        try:
            if not buffer and self._cycle_answer(data):
                return
            out, used = self._scan(view)
            if out:
                self.client.write(out)
        except BaseException as exc:  # a setting changed, the client is gone: the end
            self._end(exc)
            return
        if buffer:
            del buffer[:used]
        elif used < len(data):
            buffer += data[used:]

    def _cycle_answer(self, data: bytes) -> bool:
        """The server's whole answer to one round trip of the unnamed statement (`_cycle`, or
        the same messages read one by one) in one delivery: ParseComplete, BindComplete, a row
        description or NoData, rows, CommandComplete, ReadyForQuery — no error, notice,
        notification or setting among them. Tracked as those messages one by one would be,
        relayed as it came; anything else: False, nothing done (`_scan` reads it)."""
        expect = self.tracker.expect
        if (len(expect) != 5 or expect[2] is not DESCRIBE or expect[3] is not EXECUTE
                or expect[4] is not SYNC or not whole_answer(data)):
            return False
        parse, bind = expect[0].effect, expect[1].effect
        if (expect[0].kind != "parse" or expect[1].kind != "bind" or parse is None
                or bind is None or parse[1] or bind[1]):
            return False
        tracker, status = self.tracker, data[-1:]
        tracker.answer_cycle(parse[2], bind[2], status)
        self.status = status
        self.client.send(data)
        return True

    def _server_eof(self) -> None:
        self._end(Closed())

    def _scan(self, buffer: bytes | bytearray) -> tuple[bytes | bytearray, int]:
        """(bytes for the client, bytes consumed) for the complete messages in `buffer`."""
        pos, size, start = 0, len(buffer), 0
        out: bytearray | None = None
        unpack, tracked = _LENGTH.unpack_from, _TRACKED
        while pos + 5 <= size:
            end = pos + 1 + unpack(buffer, pos + 1)[0]
            if end > size:
                break
            kind = buffer[pos]
            if kind in tracked:
                replacement = self._server_message(kind, buffer, pos + 5, end)
                if replacement is not None:
                    out = out if out is not None else bytearray()
                    out += buffer[start:pos]
                    out += replacement
                    start = end
            pos = end
        if out is None:
            return (buffer if pos == size else buffer[:pos]), pos
        out += buffer[start:pos]
        return out, pos

    def _server_message(self, kind: int, buffer: bytes | bytearray, start: int,
                        end: int) -> bytes | None:
        """Track one server message (its body is buffer[start:end]); the bytes to send
        instead of it, if any."""
        tracker = self.tracker
        if kind == 90:  # Z: ReadyForQuery
            tracker.sync()
            self.status = bytes(buffer[start:min(end, start + 1)])
            tracker.ready(self.status)
        elif kind == 49:  # 1: ParseComplete
            tracker.complete("parse")
        elif kind == 50:  # 2: BindComplete
            tracker.complete("bind")
        elif kind == 67:  # C: CommandComplete
            done = tracker.execute_done()
            if done is not None and done.audit is not None:
                self._audit_rows(done, bytes(buffer[start:end]))
        elif kind == 69:  # E: ErrorResponse
            refusal = tracker.error()
            return refusal.error if refusal is not None else None
        elif kind == 83:  # S: ParameterStatus
            body = bytes(buffer[start:end])
            name, at = m.read_cstring(body, 0)
            value, _ = m.read_cstring(body, at)
            self._check_settings({name: value})
        elif kind == 51:  # 3: CloseComplete
            tracker.complete("close")
        else:  # I: EmptyQueryResponse, s: PortalSuspended
            tracker.execute_done()
        return None

    # ------------------------------------------------------------------ the client's side

    def _client_data(self, data: bytes) -> None:
        inbox = self.inbox
        try:
            if (self._slow_task is None and not self.skipping and not inbox.unread()
                    and self._cycle(data)):
                return
        except BaseException as exc:  # the server is gone: the end, as from `_batch`
            self._end(exc)
            return
        inbox.feed(data)
        if self._slow_task is not None:  # a decision is pending: read ahead, in bounds
            if inbox.unread() > _READ_AHEAD:
                self.client.reading("read ahead", False)
            return
        try:
            work = self._batch()
        except BaseException as exc:
            self._end(exc)
            return
        if work is not None:
            self._slow_work = work
            self._slow_task = asyncio.get_running_loop().create_task(self._slowly())

    def _client_eof(self) -> None:
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result(None)
        if self._slow_task is None:
            self._end(Closed())
        # else: what arrived before the end is still handled, then the connection ends

    async def _slowly(self) -> None:
        """The messages from one that needs a decision not known on the event loop, in order,
        until a batch is handled without waiting."""
        try:
            while (work := self._slow_work) is not None:
                self._slow_work = None
                await work
                self._slow_work = self._batch()
        except BaseException as exc:  # noqa: BLE001  # the connection ends with it
            self._end(exc)
            return
        finally:
            self._slow_task = None
        self.client.reading("read ahead", True)
        if self.client.eof:
            self._end(Closed())

    def _batch(self) -> Awaitable[None] | None:
        """Handle every complete message that arrived; the rest of the work when a message
        needs a decision that is not known yet (what follows it waits)."""
        inbox, handlers = self.inbox, _CLIENT
        while (found := inbox.next()) is not None:
            kind, body, raw = found
            if self.skipping and kind != 83:  # S
                continue  # the server skips it too (an error came first): never sent
            handler = handlers.get(kind)
            if handler is None:
                raise m.ProtocolViolation(f"unexpected message type {bytes((kind,))!r}")
            work = handler(self, body, raw)
            if work is not None:
                return work
        self._flush()
        return None

    def _cycle(self, data: bytes) -> bool:
        """The extended protocol's round trip of one statement (libpq's PQexecParams, pgbench
        -M extended), arriving as one delivery: Parse of the unnamed statement, Bind of the
        unnamed portal to it, Describe and Execute of that portal, Sync. When the Parse is one
        this connection handled before (`_remember_cycle`) and its statement was allowed
        plainly (`_again`), the delivery is checked with a few comparisons and relayed as it
        came, with the same effects as its messages one by one; anything else: False, nothing
        done (the messages are read one by one)."""
        end = round_trip(data, self.inbox.limit)
        found = self._cycles.get(data[:end]) if end else None
        if found is None:
            return False
        statement, parse = found
        if not self._again(statement):
            return False
        assert self.upstream is not None
        portal = Portal(statement, data[end + 7:len(data) - len(CYCLE_TAIL)], allowed=True)
        self.tracker.queue_cycle(parse, Expect("bind", effect=("portal", "", portal)))
        self.upstream.pipe.send(data)
        return True

    def _remember_cycle(self, raw: bytes, text: str, statement: Statement) -> None:
        """A Parse of the unnamed statement that `_cycle` may take without reading it: one
        statement with no effect on what the server holds or how it reads text."""
        if (statement.execute is None and statement.settles and statement is not _EMPTY
                and _sql_effect(statement) is None and _plain_text(text)):
            if len(self._cycles) >= _PARSED_SIZE:
                self._cycles.clear()
            self._cycles[raw] = (statement, Expect("parse", effect=("stmt", "", statement)))

    def _flush(self) -> None:
        if self.out:
            assert self.upstream is not None
            self.upstream.pipe.write(self.out)
            self.out = bytearray()

    def _send(self, raw: bytes, expect: Expect | None = None) -> None:
        if expect is not None:
            self.tracker.queue(expect)
        self.out += raw

    # ------------------------------------------------------------------ client messages

    def _query(self, body: bytes, raw: bytes) -> Awaitable[None] | None:
        text = m.query_message(body)
        statements = self._classified(text)
        if isinstance(statements, str):
            self._refuse_query("42601", statements)
            return None
        return self._query_from(_QueryRun(raw, statements))

    def _query_from(self, run: _QueryRun) -> Awaitable[None] | None:
        """Judge the statements of a Query from `run.index` on; the rest of the work when one
        needs a decision not known yet."""
        statements = run.statements
        while run.index < len(statements):
            effective = self._effective(statements[run.index], run.pending)
            if isinstance(effective, str):
                self._refuse_query("26000", effective)
                return None
            outcome = self._judge_now(effective, b"")
            if isinstance(outcome, RequestContext):
                return self._query_later(run, effective, outcome)
            if outcome is not None:
                self._refuse_query(*outcome)
                return None
            self._query_allowed(run)
        self.tracker.drop_unnamed()
        self._mark_settling(statements)
        self._send(run.raw, Expect("query", effects=run.effects, audit=run.audits or None))
        return None

    async def _query_later(self, run: _QueryRun, effective: Statement,
                           context: RequestContext) -> None:
        outcome = await self._judge_later(effective, context)
        if outcome is not None:
            self._refuse_query(*outcome)
            return
        self._query_allowed(run)
        work = self._query_from(run)
        if work is not None:
            await work

    def _query_allowed(self, run: _QueryRun) -> None:
        statement = run.statements[run.index]
        effect = _sql_effect(statement)
        if effect is not None:
            run.pending[effect[1]] = effect[2]
        run.effects.append(effect)
        run.audits.append(self._last_audit)
        run.index += 1

    def _parse(self, body: bytes, raw: bytes) -> None:
        found = self._parsed.get(body)
        if found is None:
            name, text = m.parse_message(body)
            if len(self._parsed) >= _PARSED_SIZE:
                self._parsed.clear()
            self._parsed[body] = found = (name, text, self._classify(text))
        name, text, classified = found
        statements = self._checked(text, classified)
        if isinstance(statements, str):
            return self._refuse("42601", statements)
        if len(statements) > 1:
            return self._refuse("42601", "cannot insert multiple commands into a prepared "
                                         "statement")
        if name and self.tracker.reused("stmt", name):
            return self._refuse("42P05", f'prepared statement "{name}" was used before on this '
                                         "connection; Stepguard needs a new name for each")
        statement = statements[0] if statements else _EMPTY
        self._send(raw, Expect("parse", effect=("stmt", name, statement)))
        if not name:
            self._remember_cycle(raw, text, statement)
        return None

    def _bind(self, body: bytes, raw: bytes) -> None:
        portal, name, params = m.bind_message(body)
        statement = self.tracker.lookup("stmt", name)
        if statement is None:
            return self._refuse("26000", f'prepared statement "{name}" does not exist')
        self._send(raw, Expect("bind", effect=("portal", portal, Portal(statement, params))))
        return None

    def _execute(self, body: bytes, raw: bytes) -> Awaitable[None] | None:
        portal_name = m.execute_message(body)
        portal = self.tracker.lookup("portal", portal_name)
        if portal is None:
            self._refuse("34000", f'portal "{portal_name}" does not exist (Stepguard '
                                  "judges only portals bound through it)")
            return None
        if portal.allowed:  # more rows of a run already allowed (Execute with a row limit)
            self._send(raw, EXECUTE)
            return None
        effective = self._effective(portal.statement, {})
        if isinstance(effective, str):
            self._refuse("26000", effective)
            return None
        outcome = self._judge_now(effective, portal.params)
        if isinstance(outcome, RequestContext):
            return self._execute_later(raw, portal, effective, outcome)
        if outcome is not None:
            self._refuse(*outcome)
            return None
        self._execute_allowed(raw, portal)
        return None

    async def _execute_later(self, raw: bytes, portal: Portal, effective: Statement,
                             context: RequestContext) -> None:
        outcome = await self._judge_later(effective, context)
        if outcome is not None:
            self._refuse(*outcome)
            return
        self._execute_allowed(raw, portal)

    def _execute_allowed(self, raw: bytes, portal: Portal) -> None:
        portal.allowed = True
        statement = portal.statement
        if not statement.settles:
            self._mark_settling([statement])
        effect = _sql_effect(statement)
        audit = self._last_audit
        if effect is None and audit is None:
            self._send(raw, EXECUTE)
        else:
            self._send(raw, Expect("execute", effect=effect,
                                   audit=[audit] if audit is not None else None))

    def _close_message(self, body: bytes, raw: bytes) -> None:
        target, name = m.close_or_describe(body)
        table = "stmt" if target == "S" else "portal"
        self._send(raw, Expect("close", effect=(table, name, REMOVE)))

    def _describe(self, body: bytes, raw: bytes) -> None:
        m.close_or_describe(body)
        self._send(raw, DESCRIBE)

    def _sync(self, body: bytes, raw: bytes) -> None:
        self.skipping = False
        self._send(raw, SYNC)

    def _relay_only(self, body: bytes, raw: bytes) -> None:
        self._send(raw)

    def _terminate(self, body: bytes, raw: bytes) -> None:
        self._send(raw)
        self._flush()
        raise Closed()

    def _function_call(self, body: bytes, raw: bytes) -> None:
        self._refuse("42501", "The fast-path function call protocol is not allowed through "
                              "Stepguard: call functions with SQL.")

    # ------------------------------------------------------------------ judging

    _last_audit: Any = None

    def _classified(self, text: str) -> tuple[Statement, ...] | str:
        return self._checked(text, self._classify(text))

    def _classify(self, text: str) -> tuple[Statement, ...] | str:
        """The statements of `text`, or why it is refused whatever the policy says (the same
        answer for the same text: it can be remembered)."""
        assert self.classifier is not None
        try:
            statements = self.classifier.classify(text).statements
        except Unparseable as exc:
            return f"Stepguard refused a statement it cannot read: {exc}"
        for statement in statements:
            refusal = statement.refusal or (statement.inner.refusal if statement.inner else "")
            if refusal:
                return refusal
        return statements

    def _checked(self, text: str, classified: tuple[Statement, ...] | str
                 ) -> tuple[Statement, ...] | str:
        """The refusals that depend on this connection's state at this moment."""
        if self.tracker.seen_syncs < self.unsettled_until and not _plain_text(text):
            return ("A previous statement may have changed how text is read; wait for it to "
                    "finish before sending text with backslashes or non-ASCII characters.")
        if isinstance(classified, str):
            return classified
        for statement in classified:
            if statement.prepare is not None and self.tracker.reused("stmt", statement.prepare):
                return (f'prepared statement "{statement.prepare}" was used before on this '
                        "connection; Stepguard needs a new name for each")
        return classified

    def _effective(self, statement: Statement, pending: dict[str, Any]) -> Statement | str:
        """The statement that will run: an EXECUTE runs its prepared statement."""
        if statement.execute is None:
            return statement
        name = statement.execute
        inner: Statement | None = (pending[name] if name in pending
                                   else self.tracker.lookup("stmt", name))
        if inner is None or inner is REMOVE:
            return f'prepared statement "{name}" does not exist'
        return replace(inner, text=f"{statement.text} -- {inner.text}",
                       digest=hashlib.sha256(f"{statement.text}\n{inner.text}".encode())
                       .hexdigest())

    def _mark_settling(self, statements: Any) -> None:
        if any(not s.settles for s in statements):
            self.unsettled_until = self.tracker.sent_syncs + 1

    def _context(self, statement: Statement, params: bytes) -> RequestContext:
        assert self.database is not None
        return statement_context(statement.text, database=self.database.name, params=params,
                                 client_ip=self.client_ip, user_agent=self.application,
                                 literals=self.rt.config.postgres.audit_literals,
                                 statement=statement)

    def _judge_now(self, statement: Statement, params: bytes
                   ) -> tuple[str, str, str] | RequestContext | None:
        """None when the statement may run now; (SQLSTATE, message, hint) of a refusal; or,
        when the answer is not known on the event loop, the context to judge it with
        (`_judge_later`)."""
        self._last_audit = None
        if self._again(statement):
            return None
        assert self.identity is not None
        context = self._context(statement, params)
        check = self.gw.guard.check_cached_key(context, self.identity.session_key)
        if check is None or check.session is None or check.decision.outcome is Outcome.STEP_UP:
            return context
        return self._decided(statement, check)

    async def _judge_later(self, statement: Statement, context: RequestContext
                           ) -> tuple[str, str, str] | None:
        check = await self._check(context, cached=False)  # `_judge_now` looked in the cache
        if check.decision.outcome is Outcome.STEP_UP:
            return await self._step_up(check, statement)
        return self._decided(statement, check)

    def _decided(self, statement: Statement, check: Check) -> tuple[str, str, str] | None:
        decision = check.decision
        if decision.outcome is Outcome.ALLOW:
            self._note(check)
            self._remember(statement, check)
            return None
        return ("42501", " ".join(decision.reasons) or "Stepguard denies this statement.", "")

    def _again(self, statement: Statement) -> bool:
        """A statement this connection was allowed before, plainly (nothing but its sign-in),
        given the same answer again while the session's and user's versions are unchanged and
        within the same hour (`Turn.again`: the versions are read after the
        statement arrived, so a revocation still stops the very next one), audited again,
        without deciding it again."""
        found = self._memo.get(id(statement))
        if found is None or found[0] is not statement:
            return False
        assert self.identity is not None
        return self.turn.again(self.identity.session_key, found[2], found[1])

    def _remember(self, statement: Statement, check: Check) -> None:
        guard = self.gw.guard
        if not self.gw.memo_ok or not guard.plain_allow(check) or self.identity is None:
            return
        versions = check.versions  # those it was decided under (a later read may be newer)
        if versions is None or check.at is None:
            return
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        until = (check.at // 3600 + 1) * 3600  # the end of the hour it was decided in
        self._memo[id(statement)] = (statement, versions, guard.answer(check, until))

    async def _check(self, context: RequestContext, cached: bool = True) -> Check:
        assert self.identity is not None
        guard, key = self.gw.guard, self.identity.session_key
        found = guard.check_cached_key(context, key) if cached else None
        if found is not None and found.session is not None:
            return found
        # rotated by a step-up (follow the session), or ended: never judged anonymous
        if await asyncio.to_thread(guard.load_key, key) is None and await self._session() is None:
            await self._fatal("28000", "The Stepguard session this connection belongs to "
                                       "has ended.")
            raise Closed()
        check = await asyncio.to_thread(guard.check_key, context, self.identity.session_key)
        if check.session is None:
            await self._fatal("28000", "The Stepguard session this connection belongs to has "
                                       "ended.")
            raise Closed()
        return check

    def _note(self, check: Check) -> None:
        decision = check.decision
        if decision.grant_id or decision.rule != "default":
            self._last_audit = check

    async def _step_up(self, check: Check, statement: Statement) -> tuple[str, str, str] | None:
        decision = _held_decision(check.decision, check.context, statement)
        challenge = await asyncio.to_thread(
            self.gw.stepup.start, decision, check.context, check.session,
            return_url="/account", held=HeldRequest("SQL"))
        link = f"{self.rt.config.server.public_url.rstrip('/')}/step-up/{challenge.id}"
        reason = " ".join(decision.reasons[:1]) or "This statement needs a step-up."
        self._flush()
        self.client.write(m.notice(f"Stepguard: {reason} Approve it at {link}",
                                   hint=f"Waiting up to {int(self.gw.hold_timeout)} s; the "
                                        "statement runs once when you approve it."))
        await self.client.drain()
        self.hold = Hold(challenge.id)
        try:
            outcome = await self._wait(challenge.id, check.context)
        except BaseException:  # the client left or the gateway stops: the approval is void
            await asyncio.shield(self._abandon(challenge.id))
            raise
        finally:
            self.hold = None
        if isinstance(outcome, Check):
            self._last_audit = outcome
            return None
        await self._abandon(challenge.id)
        if outcome == "cancelled":
            return ("57014", "canceling statement due to user request", "")
        return ("28000", f"Stepguard: {reason} The step-up was not completed ({outcome}).",
                f"Run the statement again and approve it at the new link (this one was {link}).")

    async def _abandon(self, challenge_id: str) -> None:
        with contextlib.suppress(StepguardError):
            await asyncio.to_thread(self.rt.store.challenges.abandon, challenge_id,
                                    now=self.rt.now())

    async def _wait(self, challenge_id: str, context: RequestContext) -> Check | str:
        assert self.hold is not None
        hold = self.hold
        deadline = asyncio.get_running_loop().time() + self.gw.hold_timeout
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
            if self.client.eof:
                self._gone.set_result(None)
        gone = self._gone
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return "timed out"
            cancelled: asyncio.Future[Any] = asyncio.ensure_future(hold.cancelled.wait())
            await asyncio.wait({cancelled, gone}, timeout=min(self.gw.poll_interval, remaining),
                               return_when=asyncio.FIRST_COMPLETED)
            cancelled.cancel()
            if gone.done():
                raise Closed()  # the client left while held: nothing runs
            if hold.cancelled.is_set():
                return "cancelled"
            record = await asyncio.to_thread(self.rt.store.challenges.get, challenge_id)
            if record is None or record.status in ("abandoned", "expired"):
                return "refused"
            if record.status != "passed":
                continue
            check = await self._check(context)
            if check.decision.allowed:
                return check
            return "the approval was already used"

    # ------------------------------------------------------------------ refusals

    def _refuse(self, code: str, text: str, hint: str = "") -> None:
        """Refuse an extended-protocol message: the server fails an injected Parse in its
        place (aborting the transaction and skipping to Sync as PostgreSQL would)."""
        self._send(_REFUSAL_PARSE, Expect("refusal", error=m.error(code, text, hint=hint)))
        self.skipping = True

    def _refuse_query(self, code: str, text: str, hint: str = "") -> None:
        self.tracker.drop_unnamed()
        self._send(_REFUSAL_QUERY, Expect("refusal_query", error=m.error(code, text, hint=hint)))

    def _audit_rows(self, done: Expect, body: bytes) -> None:
        audits = done.audit if isinstance(done.audit, list) else [done.audit]
        check = audits.pop(0) if audits else None
        if check is None:
            return
        tag, _ = m.read_cstring(body, 0)
        rows = tag.rsplit(" ", 1)[-1]
        self.rt.record(kind="decision", subject=check.user.id if check.user else "",
                       session_id=check.session.id if check.session else "",
                       decision="allow", rule=check.decision.rule, outcome="executed",
                       request=_summary(check, self.rt), detail={
                           "rows": int(rows) if rows.isdigit() else 0, "command": tag[:32]})


_EMPTY = Statement(text="", kind="other", kinds=frozenset({"other"}))


def _summary(check: Check, rt: Any) -> dict[str, str]:
    from stepguard.audit.ledger import request_summary

    return request_summary(check.context, ip_key=rt.ip_key)


def _held_decision(decision: Decision, context: RequestContext, statement: Statement) -> Decision:
    """The step-up as the portal shows it: the database and the statement, and (when a grant
    is needed) a single-use grant bound to this statement."""
    requirement = decision.requirement
    if requirement is not None and requirement.needs_grant and not requirement.single_use:
        requirement = replace(requirement, single_use=True)
    shown = (("database", str(context.statement.get("database", ""))),
             ("statement", statement.text[:500]))
    return replace(decision, requirement=requirement, bound_values=shown)


def _sql_effect(statement: Statement) -> tuple[str, str, Any] | None:
    if statement.prepare is not None and statement.inner is not None:
        return ("stmt", statement.prepare, statement.inner)
    if statement.deallocate is not None:
        return ("stmt", statement.deallocate or ALL, REMOVE)
    if statement.kind == "set" and statement.text.lower().startswith("discard"):
        return ("stmt", ALL, REMOVE)
    return None


def _utf8(value: str) -> bool:
    """PostgreSQL's reading of an encoding name: case and punctuation ignored."""
    return "".join(c for c in value.upper() if c.isalnum()) in ("UTF8", "UNICODE")


def _plain_text(text: str) -> bool:
    return text.isascii() and "\\" not in text


@dataclass(slots=True)
class _QueryRun:
    """A simple Query being judged statement by statement."""

    raw: bytes
    statements: tuple[Statement, ...]
    index: int = 0
    effects: list[tuple[str, str, Any] | None] = field(default_factory=list)
    audits: list[Any] = field(default_factory=list)
    pending: dict[str, Any] = field(default_factory=dict)


_Handler = Callable[[Connection, bytes, bytes], Awaitable[None] | None]
_CLIENT: dict[int, _Handler] = {
    ord("Q"): Connection._query,
    ord("P"): Connection._parse,
    ord("B"): Connection._bind,
    ord("E"): Connection._execute,
    ord("C"): Connection._close_message,
    ord("D"): Connection._describe,
    ord("S"): Connection._sync,
    ord("H"): Connection._relay_only,
    ord("d"): Connection._relay_only,
    ord("c"): Connection._relay_only,
    ord("f"): Connection._relay_only,
    ord("X"): Connection._terminate,
    ord("F"): Connection._function_call,
}

__all__ = ["Connection", "StepguardError"]
