"""Plain allows summarised per subject, session, rule and interval instead of one entry each.

An allow is *plain* when no grant was used, its rule asks for nothing above a baseline sign-in
(no level above aal1, no freshness, scope, single use or binding) and the risk level is low.
Every other decision (step-ups, denies, allows under a requirement or spending a grant) stays its
own sealed entry. With `audit.allows: every_request` plain allows are single entries too (PCI
DSS 10.2.1: individual user access to cardholder data; see docs/configuration.md).

`note` costs a dict lookup and an increment under a lock. The audit writer's thread asks for the
closed intervals (`due`) and seals one entry per key: kind `decision`, decision `allow`, outcome
`allow_summary`, `at` the last allow's time, detail `count`, `first`, `last`, `interval` and up to
`PATH_SAMPLE` distinct paths.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from stepguard.audit.ledger import AuditEvent, AuditKind

PATH_SAMPLE = 10

Key = tuple[str, str, str, int]  # subject, session ref, rule, interval number


@dataclass(slots=True)
class _Open:
    host: str
    method: str
    first: float
    last: float
    count: int = 0
    paths: list[str] = field(default_factory=list)


class AllowSummary:
    def __init__(self, interval: float = 60.0) -> None:
        if interval <= 0:
            raise ValueError("the summary interval must be positive")
        self.interval = interval
        self._open: dict[Key, _Open] = {}
        self._lock = threading.Lock()

    def note(self, *, subject: str, session: str, rule: str, at: float, host: str,
             method: str, path: str) -> None:
        key = (subject, session, rule, math.floor(at / self.interval))
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                entry = self._open[key] = _Open(host, method, at, at)
            entry.count += 1
            if at > entry.last:
                entry.last = at
            if len(entry.paths) < PATH_SAMPLE and path not in entry.paths:
                entry.paths.append(path)

    @property
    def pending(self) -> int:
        """Allows noted and not yet handed out as entries."""
        return sum(entry.count for entry in list(self._open.values()))

    def next_due(self) -> float | None:
        """When the oldest open interval closes (None when nothing is open)."""
        with self._lock:
            if not self._open:
                return None
            return (min(key[3] for key in self._open) + 1) * self.interval

    def due(self, now: float) -> list[AuditEvent]:
        """Entries for every interval that closed by `now` (they are forgotten here)."""
        current = math.floor(now / self.interval)
        return self._take(lambda key: key[3] < current)

    def drain(self) -> list[AuditEvent]:
        """Entries for every open interval, closed early (a flush or a clean stop)."""
        return self._take(lambda key: True)

    def _take(self, closed: object) -> list[AuditEvent]:
        with self._lock:
            keys = [key for key in self._open if closed(key)]  # type: ignore[operator]
            taken = [(key, self._open.pop(key)) for key in keys]
        taken.sort(key=lambda item: item[1].last)
        return [self._event(key, entry) for key, entry in taken]

    def _event(self, key: Key, entry: _Open) -> AuditEvent:
        subject, session, rule, _ = key
        return AuditEvent(
            at=entry.last, kind=AuditKind.DECISION, subject=subject, session=session,
            request={"method": entry.method, "host": entry.host},
            decision="allow", rule=rule, outcome="allow_summary",
            detail={"count": entry.count, "first": entry.first, "last": entry.last,
                    "interval": self.interval, "paths": list(entry.paths)},
        )
