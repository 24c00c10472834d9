"""What the upstream server holds for one connection: prepared statements and portals, as the
server's own answers confirm them.

A client's Parse, Bind and Close (and SQL PREPARE / DEALLOCATE) take effect only when the server
acknowledges them: after an error the server skips every message up to Sync, so an effect the
gateway assumed would be wrong. Each forwarded message therefore queues the answer it expects;
the server's answers apply or drop the effects in order. Judging a Bind or Execute looks at the
confirmed state overlaid with the effects still in flight (what the server will hold if no error
comes first; if one does, the server skips the judged message too).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from stepguard.pgwire.classify import Statement

_ABSENT: Any = object()
_Effect = tuple[str, str, Any]


class Portal:
    """A bound portal: its statement and parameters; `allowed`: an Execute of it was allowed
    (later ones continue that run). A plain class: made once per round trip on the door's hot
    path, where a dataclass's generated `__init__` would run as Python even when compiled."""

    __slots__ = ("statement", "params", "allowed")

    def __init__(self, statement: Statement, params: bytes, allowed: bool = False) -> None:
        self.statement = statement
        self.params = params
        self.allowed = allowed

    def __repr__(self) -> str:
        return f"Portal({self.statement!r}, {self.params!r}, allowed={self.allowed})"


class Expect:
    """One answer the server owes for a forwarded message. The common ones without an effect
    (Describe, Sync, a continued Execute) are shared constants: nothing is made per message."""

    __slots__ = ("kind", "effect", "effects", "error", "audit")

    def __init__(self, kind: str, effect: _Effect | None = None,
                 effects: list[_Effect | None] | None = None, error: bytes = b"",
                 audit: Any = None) -> None:
        self.kind = kind  # parse, bind, close, describe, execute, sync, query, refusal,
        # refusal_query
        self.effect = effect  # (table, name, value or REMOVE)
        self.effects = effects  # query: each statement's effect, in order
        self.error = error  # refusal: the ErrorResponse the client gets instead of the server's
        self.audit = audit  # execute/query: what to record with the rows affected


SYNC = Expect("sync")
DESCRIBE = Expect("describe")
EXECUTE = Expect("execute")
_SYNCS = frozenset({"sync", "query", "refusal_query"})


class Tracker:
    """Confirmed statements, portals and SQL prepared statements, plus effects in flight."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any]] = {"stmt": {}, "portal": {}}
        self.used_names: set[str] = set()  # statement names ever prepared
        self.expect: deque[Expect] = deque()
        self.sent_syncs = 0
        self.seen_syncs = 0

    # ------------------------------------------------------------------ lookups (overlay)

    def lookup(self, table: str, name: str) -> Any:
        """The value the server will hold for `name` once everything in flight succeeds."""
        value = self.tables[table].get(name, _ABSENT)
        for expect in self.expect:
            effect = expect.effect
            if effect is not None:
                if effect[0] == table and (effect[1] == name or (effect[1] == ALL and name)):
                    value = effect[2]
            elif expect.effects:
                for effect in expect.effects:
                    if effect is not None and effect[0] == table and (
                            effect[1] == name or (effect[1] == ALL and name)):
                        value = effect[2]
        return None if value is _ABSENT else value

    def reused(self, table: str, name: str) -> bool:
        """Whether a named statement was ever prepared on this connection (a name is never
        reused: a failed Close or DEALLOCATE would leave the old statement behind it)."""
        return bool(name) and table == "stmt" and name in self.used_names

    # ------------------------------------------------------------------ client side

    def queue(self, expect: Expect) -> None:
        effect = expect.effect
        if effect is not None:
            if effect[1] and effect[0] == "stmt" and effect[2] is not _ABSENT:
                self.used_names.add(effect[1])
        elif expect.effects:
            for one in expect.effects:
                if one is not None and one[1] and one[0] == "stmt" and one[2] is not _ABSENT:
                    self.used_names.add(one[1])
        if expect.kind in _SYNCS:
            self.sent_syncs += 1
        self.expect.append(expect)

    def queue_cycle(self, parse: Expect, bind: Expect) -> None:
        """`queue` of an unnamed Parse and Bind (no names to remember) followed by Describe,
        Execute and Sync."""
        self.expect.extend((parse, bind, DESCRIBE, EXECUTE, SYNC))
        self.sent_syncs += 1

    # ------------------------------------------------------------------ server side

    def answer(self, kind: bytes) -> Expect | None:
        """Apply the server's answer of type `kind`; the expectation it completed, if any."""
        if kind in _ANSWERS:
            return self.complete(_ANSWERS[kind])
        if kind in (b"C", b"I", b"s"):
            return self.execute_done()
        if kind == b"Z":
            return self.sync()
        return None

    def answer_cycle(self, statement: Statement, portal: Portal, status: bytes) -> None:
        """`answer` of ParseComplete, BindComplete, CommandComplete and ReadyForQuery when
        exactly an unnamed Parse, Bind, Describe, Execute and Sync are in flight."""
        self.expect.clear()
        self.tables["stmt"][""] = statement
        self.tables["portal"][""] = portal
        self.seen_syncs += 1
        self.ready(status)

    def error(self) -> Expect | None:
        """The server reported an error: the failed message's effects and, in the extended
        protocol, every effect up to the next Sync are dropped. The refusal it answers, if
        the error answers an injected refusal."""
        expect = self.expect
        if not expect:
            return None
        head = expect[0]
        if head.kind in ("query", "refusal_query"):
            head.effects = None
            return head if head.kind == "refusal_query" else None
        while expect and expect[0].kind != "sync":
            expect.popleft()
        return head if head.kind == "refusal" else None

    def complete(self, kind: str) -> Expect | None:
        """ParseComplete, BindComplete or CloseComplete: the oldest such message succeeded."""
        expect = self.expect
        while expect:
            head = expect.popleft()
            if head.kind == kind:
                if head.effect is not None:
                    self._apply(head.effect)
                return head
            if head.kind == "sync" or head.kind == "query":  # out of step: keep the boundary
                expect.appendleft(head)
                return None
        return None

    def execute_done(self) -> Expect | None:
        """CommandComplete, EmptyQueryResponse or PortalSuspended."""
        expect = self.expect
        if not expect:
            return None
        head = expect[0]
        if head.kind == "query":
            if head.effects:
                self._apply(head.effects.pop(0))
            return head
        while head.kind == "describe":
            expect.popleft()
            if not expect:
                return None
            head = expect[0]
        if head.kind == "execute":
            expect.popleft()
            if head.effect is not None:
                self._apply(head.effect)
            return head
        return None

    def sync(self) -> Expect | None:
        """ReadyForQuery: everything up to the Sync (or Query) it answers is settled."""
        self.seen_syncs += 1
        expect = self.expect
        while expect:
            head = expect.popleft()
            if head.kind in _SYNCS:
                return head
        return None

    def ready(self, status: bytes) -> None:
        """ReadyForQuery: outside a transaction block no portal survives."""
        if status == b"I":
            portals = self.tables["portal"]
            if portals:
                portals.clear()

    def drop_unnamed(self) -> None:
        """A simple Query drops the unnamed statement and portal before it runs."""
        self.tables["stmt"].pop("", None)
        self.tables["portal"].pop("", None)

    def _apply(self, effect: _Effect | None) -> None:
        if effect is None:
            return
        table, name, value = effect
        if name == ALL:  # DEALLOCATE ALL, DISCARD ALL: every named statement (not the unnamed)
            unnamed = self.tables["stmt"].get("", _ABSENT)
            self.tables["stmt"].clear()
            if unnamed is not _ABSENT:
                self.tables["stmt"][""] = unnamed
        elif value is _ABSENT:
            self.tables[table].pop(name, None)
        else:
            self.tables[table][name] = value


_ANSWERS = {b"1": "parse", b"2": "bind", b"3": "close"}
REMOVE = _ABSENT
ALL = "\x00all"  # not a name a client can send (names end at NUL)
