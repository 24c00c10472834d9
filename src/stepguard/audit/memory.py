"""An audit ledger in memory (unit tests, demos): the same sealing as `SqlAuditLog`."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from stepguard.audit.ledger import GENESIS_HASH, AuditEntry, AuditEvent, seal_chain


class MemoryAuditLog:
    def __init__(self) -> None:
        self._entries: list[AuditEntry] = []
        self._lock = threading.Lock()

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        with self._lock:
            last = self._entries[-1] if self._entries else None
            entries = seal_chain(events, after_seq=last.seq if last else 0,
                                 prev_hash=last.hash if last else GENESIS_HASH)
            self._entries.extend(entries)
            return entries

    def entries(self, *, after_seq: int = 0, subject: str | None = None,
                kind: str | None = None, since: float | None = None,
                until: float | None = None, **_filters: object) -> Iterator[AuditEntry]:
        with self._lock:
            found = list(self._entries)
        return iter([e for e in found if e.seq > after_seq
                     and (subject is None or e.subject == subject)
                     and (kind is None or e.kind == kind)
                     and (since is None or e.at >= since) and (until is None or e.at < until)])

    def latest(self, *, limit: int, subject: str | None = None, rule: str | None = None,
               outcome: str | None = None,
               exclude_outcomes: Sequence[str] = ()) -> list[AuditEntry]:
        with self._lock:
            found = list(self._entries)
        wanted = [e for e in reversed(found) if (subject is None or e.subject == subject)
                  and (rule is None or e.rule == rule)
                  and (outcome is None or e.outcome == outcome)
                  and e.outcome not in exclude_outcomes]
        return wanted[:max(0, limit)]

    def count(self) -> int:
        return len(self._entries)
