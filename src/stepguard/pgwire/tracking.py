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
from dataclasses import dataclass, field
from typing import Any

from stepguard.pgwire.classify import Statement

_ABSENT: Any = object()


@dataclass(slots=True)
class Portal:
    statement: Statement
    params: bytes
    allowed: bool = False  # an Execute of it was allowed: later ones continue that run


@dataclass(slots=True)
class Expect:
    """One answer the server owes for a forwarded message."""

    kind: str  # parse, bind, close, describe, execute, sync, query, refusal, refusal_query
    effect: tuple[str, str, Any] | None = None  # (table, name, value or _ABSENT to remove)
    effects: list[tuple[str, str, Any] | None] = field(default_factory=list)  # query: each
    # statement's effect, in order
    error: bytes = b""  # refusal: the ErrorResponse the client gets instead of the server's
    audit: Any = None  # execute/query: what to record with the rows affected


class Tracker:
    """Confirmed statements, portals and SQL prepared statements, plus effects in flight."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any]] = {"stmt": {}, "portal": {}}
        self.used: dict[str, set[str]] = {"stmt": set()}
        self.expect: deque[Expect] = deque()
        self.sent_syncs = 0
        self.seen_syncs = 0

    # ------------------------------------------------------------------ lookups (overlay)

    def lookup(self, table: str, name: str) -> Any:
        """The value the server will hold for `name` once everything in flight succeeds."""
        value = self.tables[table].get(name, _ABSENT)
        for expect in self.expect:
            for effect in _effects(expect):
                if effect[0] == table and (effect[1] == name or (effect[1] == ALL and name)):
                    value = effect[2]
        return None if value is _ABSENT else value

    def reused(self, table: str, name: str) -> bool:
        """Whether a named statement was ever prepared on this connection (a name is never
        reused: a failed Close or DEALLOCATE would leave the old statement behind it)."""
        return bool(name) and name in self.used[table]

    # ------------------------------------------------------------------ client side

    def queue(self, expect: Expect) -> None:
        for table, name, value in _effects(expect):
            if value is not _ABSENT and name and table in self.used:
                self.used[table].add(name)
        if expect.kind in ("sync", "query", "refusal_query"):
            self.sent_syncs += 1
        self.expect.append(expect)

    # ------------------------------------------------------------------ server side

    def answer(self, kind: bytes) -> Expect | None:
        """Apply the server's answer of type `kind`; the expectation it completed, if any."""
        if kind in _ANSWERS:
            return self._complete(_ANSWERS[kind])
        if kind in (b"C", b"I", b"s"):
            return self._execute_done()
        if kind == b"Z":
            return self._sync()
        return None

    def error(self) -> Expect | None:
        """The server reported an error: the failed message's effects and, in the extended
        protocol, every effect up to the next Sync are dropped. The refusal it answers, if
        the error answers an injected refusal."""
        if not self.expect:
            return None
        head = self.expect[0]
        if head.kind in ("query", "refusal_query"):
            head.effects.clear()
            return head if head.kind == "refusal_query" else None
        while self.expect and self.expect[0].kind != "sync":
            self.expect.popleft()
        return head if head.kind == "refusal" else None

    def _complete(self, kind: str) -> Expect | None:
        while self.expect:
            head = self.expect.popleft()
            if head.kind == kind:
                self._apply(head.effect)
                return head
            if head.kind in ("sync", "query"):  # out of step: keep the boundary
                self.expect.appendleft(head)
                return None
        return None

    def _execute_done(self) -> Expect | None:
        if not self.expect:
            return None
        head = self.expect[0]
        if head.kind == "query":
            if head.effects:
                self._apply(head.effects.pop(0))
            return head
        while self.expect and self.expect[0].kind == "describe":
            self.expect.popleft()
        if self.expect and self.expect[0].kind == "execute":
            done = self.expect.popleft()
            self._apply(done.effect)
            return done
        return None

    def _sync(self) -> Expect | None:
        self.seen_syncs += 1
        while self.expect:
            head = self.expect.popleft()
            if head.kind in ("sync", "query", "refusal_query"):
                return head
        return None

    def ready(self, status: bytes) -> None:
        """ReadyForQuery: outside a transaction block no portal survives."""
        if status == b"I":
            self.tables["portal"].clear()

    def drop_unnamed(self) -> None:
        """A simple Query drops the unnamed statement and portal before it runs."""
        self.tables["stmt"].pop("", None)
        self.tables["portal"].pop("", None)

    def _apply(self, effect: tuple[str, str, Any] | None) -> None:
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


def _effects(expect: Expect) -> list[tuple[str, str, Any]]:
    if expect.effect is not None:
        return [expect.effect]
    return [e for e in expect.effects if e is not None]
