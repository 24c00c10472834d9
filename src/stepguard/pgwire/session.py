"""One client connection through the postgres door: startup, sign-in, then every message judged
or relayed.

Client messages are read in chunks and handled in order. Query, Parse, Bind and Execute are
read; every other message is relayed as its own bytes. A statement is judged when it would run
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from stepguard.config.schema import PostgresDatabase, PostgresListener
from stepguard.core.context import RequestContext
from stepguard.core.decision import Decision, Outcome
from stepguard.core.errors import StepguardError, StoreUnavailable
from stepguard.pgwire import messages as m
from stepguard.pgwire.classify import Classifier, Statement, Unparseable, statement_context
from stepguard.pgwire.scram import MECHANISM, ScramError, ServerExchange, Verifier
from stepguard.pgwire.tracking import ALL, REMOVE, Expect, Portal, Tracker
from stepguard.pgwire.upstream import Upstream, UpstreamError, open_upstream
from stepguard.service.guard import Check
from stepguard.service.stepup import HeldRequest
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.storage.sql_db_tokens import DbTokenRecord

if TYPE_CHECKING:
    from stepguard.pgwire.gateway import PostgresGateway

log = logging.getLogger("stepguard.postgres")

REFUSED_SQL = "STEPGUARD REFUSED THIS STATEMENT"  # a syntax error: the server fails it for us
_REFUSAL_PARSE = m.message(b"P", m.cstring("") + m.cstring(REFUSED_SQL) + b"\x00\x00")
_REFUSAL_QUERY = m.message(b"Q", m.cstring(REFUSED_SQL))
_CHUNK = 262_144
_MEMO_SIZE = 1024  # plain allows remembered per connection
_TRACKED = frozenset(b"EZS123CsI")  # server messages the tracker reads
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
    """Typed messages from a stream, read in chunks; lengths checked before any allocation."""

    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        self.reader, self.limit = reader, limit
        self.buffer = bytearray()
        self.eof = False

    async def fill(self) -> None:
        chunk = await self.reader.read(_CHUNK)
        if not chunk:
            self.eof = True
            raise Closed()
        self.buffer += chunk

    def next(self) -> tuple[bytes, bytes, bytes] | None:
        """(type, body, raw) of the next complete message in the buffer, or None."""
        buffer = self.buffer
        if len(buffer) < 5:
            return None
        length = int.from_bytes(buffer[1:5], "big", signed=True)
        if length < 4 or length - 4 > self.limit:
            raise m.ProtocolViolation(f"invalid message length {length}")
        end = length + 1
        if len(buffer) < end:
            return None
        raw = bytes(buffer[:end])
        del buffer[:end]
        return raw[:1], raw[5:], raw

    async def message(self) -> tuple[bytes, bytes, bytes]:
        while True:
            found = self.next()
            if found is not None:
                return found
            await self.fill()


class Connection:
    def __init__(self, gateway: PostgresGateway, listener: PostgresListener,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.gw = gateway
        self.rt = gateway.rt
        self.listener = listener
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else ""
        self.inbox = Inbox(reader, self.rt.config.postgres.max_message)
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
        self._memo: dict[int, tuple[Statement, tuple[int, int], int, Check]] = {}

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
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def _fatal(self, code: str, text: str, hint: str = "") -> None:
        with contextlib.suppress(Exception):
            self.writer.write(m.error(code, text, hint=hint, severity="FATAL"))
            await asyncio.wait_for(self.writer.drain(), 1.0)

    # ------------------------------------------------------------------ startup

    async def _startup(self) -> dict[str, str] | None:
        tls = False
        while True:
            code, body = await m.read_startup(self.reader)
            if code == m.CANCEL_REQUEST:
                await self.gw.cancel(body)
                return None
            if code in (m.SSL_REQUEST, m.GSSENC_REQUEST) and not tls:
                if _buffered(self.reader):  # bytes sent before TLS must not count after it
                    raise m.ProtocolViolation("data sent after SSLRequest before TLS")
                context = self.gw.tls_for(self.listener) if code == m.SSL_REQUEST else None
                self.writer.write(b"S" if context else b"N")
                await self.writer.drain()
                if context is not None:
                    await self.writer.start_tls(context)
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
                self.writer.write(m.negotiate_version(0, extensions))
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
        self.writer.write(m.auth(0))
        for name, value in self.upstream.parameters.items():
            self.writer.write(m.parameter_status(name, value))
        self.writer.write(m.backend_key(*self.key))
        if dropped:
            self.writer.write(m.notice("Stepguard ignored these connection parameters: "
                                       + ", ".join(sorted(dropped))[:500]))
        self.writer.write(m.ready(self.upstream.status))
        await self.writer.drain()
        self.gw.remember(self)
        self.rt.record(kind="session", subject=user.id, session_id=token.session_id,
                       outcome="db_login", request={"host": self.database.name,
                                                    "client_ip": self.client_ip},
                       detail={"token": token.id})

    async def _scram(self, verifier: Verifier) -> bool:
        self.writer.write(m.auth(10, m.cstring(MECHANISM) + b"\x00"))
        await self.writer.drain()
        exchange = ServerExchange(verifier)
        try:
            kind, body, _ = await m.read_message(self.reader, 4096)
            if kind != b"p":
                raise m.ProtocolViolation("expected a SASL response")
            mechanism, data = m.sasl_initial(body)
            if mechanism != MECHANISM:
                raise m.ProtocolViolation("unsupported SASL mechanism")
            self.writer.write(m.auth(11, exchange.first(data.decode("utf-8")).encode()))
            await self.writer.drain()
            kind, body, _ = await m.read_message(self.reader, 4096)
            if kind != b"p":
                raise m.ProtocolViolation("expected a SASL response")
            final = exchange.final(body.decode("utf-8"))
        except (ScramError, UnicodeDecodeError):
            return False
        self.writer.write(m.auth(12, final.encode()))
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
        assert self.upstream is not None
        server = asyncio.create_task(self._from_server())
        client = asyncio.create_task(self._from_client())
        done, pending = await asyncio.wait({server, client}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, Closed | ConnectionError |
                                                  asyncio.IncompleteReadError):
                raise exc

    async def _from_server(self) -> None:
        """Relay the server's bytes as they are; only the messages that change what the
        gateway tracks are read (rows and descriptions are skipped by their length)."""
        assert self.upstream is not None
        reader = self.upstream.reader
        buffer = bytearray(self.upstream.leftover)
        while True:
            out, used = self._scan(buffer)
            if out:
                self.writer.write(out)
                await self.writer.drain()
            del buffer[:used]
            chunk = await reader.read(_CHUNK)
            if not chunk:
                raise Closed()
            buffer += chunk

    def _scan(self, buffer: bytearray) -> tuple[bytes | bytearray, int]:
        """(bytes for the client, bytes consumed) for the complete messages in `buffer`."""
        pos, size, start = 0, len(buffer), 0
        out: bytearray | None = None
        while pos + 5 <= size:
            end = pos + 1 + int.from_bytes(buffer[pos + 1:pos + 5], "big")
            if end > size:
                break
            kind = buffer[pos]
            if kind in _TRACKED:
                replacement = self._server_message(kind, bytes(buffer[pos + 5:end]))
                if replacement is not None:
                    out = out if out is not None else bytearray()
                    out += buffer[start:pos]
                    out += replacement
                    start = end
            pos = end
        if out is None:
            return buffer[:pos], pos
        out += buffer[start:pos]
        return out, pos

    def _server_message(self, kind: int, body: bytes) -> bytes | None:
        """Track one server message; the bytes to send instead of it, if any."""
        tracker = self.tracker
        if kind == 69:  # E
            refusal = tracker.error()
            return refusal.error if refusal is not None else None
        if kind == 90:  # Z
            tracker.answer(b"Z")
            self.status = body[:1]
            tracker.ready(self.status)
            return None
        if kind == 83:  # S
            name, at = m.read_cstring(body, 0)
            value, _ = m.read_cstring(body, at)
            self._check_settings({name: value})
            return None
        done = tracker.answer(bytes((kind,)))
        if kind == 67 and done is not None and done.audit is not None:  # C
            self._audit_rows(done, body)
        return None

    async def _from_client(self) -> None:
        inbox = self.inbox
        while True:
            await inbox.fill()
            while (found := inbox.next()) is not None:
                kind, body, raw = found
                await self._client_message(kind, body, raw)
            self._flush()
            await self.upstream_drain()

    async def upstream_drain(self) -> None:
        assert self.upstream is not None
        await self.upstream.writer.drain()

    def _flush(self) -> None:
        if self.out:
            assert self.upstream is not None
            self.upstream.writer.write(self.out)
            self.out = bytearray()

    def _send(self, raw: bytes, expect: Expect | None = None) -> None:
        if expect is not None:
            self.tracker.queue(expect)
        self.out += raw

    async def _client_message(self, kind: bytes, body: bytes, raw: bytes) -> None:
        if self.skipping and kind != b"S":
            return  # the server skips it too (an error came first): never sent
        handler = _CLIENT.get(kind)
        if handler is None:
            raise m.ProtocolViolation(f"unexpected message type {kind!r}")
        await handler(self, body, raw)

    # ------------------------------------------------------------------ client messages

    async def _query(self, body: bytes, raw: bytes) -> None:
        text = m.query_message(body)
        statements = self._classified(text)
        if isinstance(statements, str):
            return self._refuse_query("42601", statements)
        effects: list[tuple[str, str, Any] | None] = []
        audits: list[Any] = []
        pending: dict[str, Any] = {}
        for statement in statements:
            effective = self._effective(statement, pending)
            if isinstance(effective, str):
                return self._refuse_query("26000", effective)
            outcome = await self._judge(effective, b"")
            if outcome is not None:
                return self._refuse_query(*outcome)
            effect = _sql_effect(statement)
            if effect is not None:
                pending[effect[1]] = effect[2]
            effects.append(effect)
            audits.append(self._last_audit)
        self.tracker.drop_unnamed()
        self._mark_settling(statements)
        self._send(raw, Expect("query", effects=effects, audit=audits or None))
        return None

    async def _parse(self, body: bytes, raw: bytes) -> None:
        name, text = m.parse_message(body)
        statements = self._classified(text)
        if isinstance(statements, str):
            return self._refuse("42601", statements)
        if len(statements) > 1:
            return self._refuse("42601", "cannot insert multiple commands into a prepared "
                                         "statement")
        if self.tracker.reused("stmt", name):
            return self._refuse("42P05", f'prepared statement "{name}" was used before on this '
                                         "connection; Stepguard needs a new name for each")
        statement = statements[0] if statements else _EMPTY
        self._send(raw, Expect("parse", effect=("stmt", name, statement)))
        return None

    async def _bind(self, body: bytes, raw: bytes) -> None:
        portal, name, params = m.bind_message(body)
        statement = self.tracker.lookup("stmt", name)
        if statement is None:
            return self._refuse("26000", f'prepared statement "{name}" does not exist')
        self._send(raw, Expect("bind", effect=("portal", portal, Portal(statement, params))))
        return None

    async def _execute(self, body: bytes, raw: bytes) -> None:
        portal_name = m.execute_message(body)
        portal = self.tracker.lookup("portal", portal_name)
        if portal is None:
            return self._refuse("34000", f'portal "{portal_name}" does not exist (Stepguard '
                                         "judges only portals bound through it)")
        if portal.allowed:  # more rows of a run already allowed (Execute with a row limit)
            self._send(raw, Expect("execute"))
            return None
        effective = self._effective(portal.statement, {})
        if isinstance(effective, str):
            return self._refuse("26000", effective)
        outcome = await self._judge(effective, portal.params)
        if outcome is not None:
            return self._refuse(*outcome)
        portal.allowed = True
        self._mark_settling([portal.statement])
        self._send(raw, Expect("execute", effect=_sql_effect(portal.statement),
                               audit=[self._last_audit] if self._last_audit else None))
        return None

    async def _close_message(self, body: bytes, raw: bytes) -> None:
        target, name = m.close_or_describe(body)
        table = "stmt" if target == "S" else "portal"
        self._send(raw, Expect("close", effect=(table, name, REMOVE)))

    async def _describe(self, body: bytes, raw: bytes) -> None:
        m.close_or_describe(body)
        self._send(raw, Expect("describe"))

    async def _sync(self, body: bytes, raw: bytes) -> None:
        self.skipping = False
        self._send(raw, Expect("sync"))

    async def _relay_only(self, body: bytes, raw: bytes) -> None:
        self._send(raw)

    async def _terminate(self, body: bytes, raw: bytes) -> None:
        self._send(raw)
        self._flush()
        raise Closed()

    async def _function_call(self, body: bytes, raw: bytes) -> None:
        self._refuse("42501", "The fast-path function call protocol is not allowed through "
                              "Stepguard: call functions with SQL.")

    # ------------------------------------------------------------------ judging

    _last_audit: Any = None

    def _classified(self, text: str) -> tuple[Statement, ...] | str:
        assert self.classifier is not None
        if self.tracker.seen_syncs < self.unsettled_until and not _plain_text(text):
            return ("A previous statement may have changed how text is read; wait for it to "
                    "finish before sending text with backslashes or non-ASCII characters.")
        try:
            statements = self.classifier.classify(text).statements
        except Unparseable as exc:
            return f"Stepguard refused a statement it cannot read: {exc}"
        for statement in statements:
            refusal = statement.refusal or (statement.inner.refusal if statement.inner else "")
            if refusal:
                return refusal
            if statement.prepare is not None and self.tracker.reused("stmt", statement.prepare):
                return (f'prepared statement "{statement.prepare}" was used before on this '
                        "connection; Stepguard needs a new name for each")
        return statements

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

    async def _judge(self, statement: Statement, params: bytes) -> tuple[str, str, str] | None:
        """None when the statement may run now; else (SQLSTATE, message, hint) of the refusal."""
        self._last_audit = None
        if self._again(statement):
            return None
        context = self._context(statement, params)
        check = await self._check(context)
        decision = check.decision
        if decision.outcome is Outcome.ALLOW:
            self._note(check)
            self._remember(statement, check)
            return None
        if decision.outcome is Outcome.DENY:
            return ("42501", " ".join(decision.reasons) or "Stepguard denies this statement.", "")
        return await self._step_up(check, statement)

    def _again(self, statement: Statement) -> bool:
        """A statement this connection was allowed before, plainly (nothing but its sign-in),
        while the session's and user's versions are unchanged — read now, per statement, so a
        revocation still stops the very next one — within the same hour: the same answer,
        audited again, without deciding it again."""
        found = self._memo.get(id(statement))
        if found is None or found[0] is not statement or found[2] != self._hour():
            return False
        assert self.identity is not None
        if self.gw.versions(self.identity.session_key, found[3].context) != found[1]:
            return False
        self.gw.guard.audit(found[3])
        return True

    def _remember(self, statement: Statement, check: Check) -> None:
        guard = self.gw.guard
        if not self.gw.memo_ok or not guard.plain_allow(check) or self.identity is None:
            return
        versions = guard.versions_now(self.identity.session_key, check.context)
        if versions is None:
            return
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[id(statement)] = (statement, versions, self._hour(), check)

    def _hour(self) -> int:
        return int(self.rt.now() // 3600)

    async def _check(self, context: RequestContext) -> Check:
        assert self.identity is not None
        guard, key = self.gw.guard, self.identity.session_key
        found = guard.check_cached_key(context, key)
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
        self.writer.write(m.notice(f"Stepguard: {reason} Approve it at {link}",
                                   hint=f"Waiting up to {int(self.gw.hold_timeout)} s; the "
                                        "statement runs once when you approve it."))
        await self.writer.drain()
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
        gone = asyncio.create_task(self._watch_client())
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return "timed out"
                cancelled = asyncio.create_task(hold.cancelled.wait())
                done, _ = await asyncio.wait(
                    {cancelled, gone}, timeout=min(self.gw.poll_interval, remaining),
                    return_when=asyncio.FIRST_COMPLETED)
                cancelled.cancel()
                if gone in done:
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
        finally:
            gone.cancel()
            with contextlib.suppress(BaseException):
                await gone

    async def _watch_client(self) -> None:
        """Read ahead while a statement is held, so a client that leaves is noticed."""
        with contextlib.suppress(Closed):
            while len(self.inbox.buffer) < 4 * _CHUNK:
                await self.inbox.fill()
            await asyncio.Event().wait()  # buffer full: stop reading, never report gone
            return
        await asyncio.sleep(0)
        raise Closed()

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


def _buffered(reader: asyncio.StreamReader) -> bool:
    return bool(getattr(reader, "_buffer", b""))


_Handler = Callable[[Connection, bytes, bytes], Awaitable[None]]
_CLIENT: dict[bytes, _Handler] = {
    b"Q": Connection._query,
    b"P": Connection._parse,
    b"B": Connection._bind,
    b"E": Connection._execute,
    b"C": Connection._close_message,
    b"D": Connection._describe,
    b"S": Connection._sync,
    b"H": Connection._relay_only,
    b"d": Connection._relay_only,
    b"c": Connection._relay_only,
    b"f": Connection._relay_only,
    b"X": Connection._terminate,
    b"F": Connection._function_call,
}

__all__ = ["Connection", "StepguardError"]
