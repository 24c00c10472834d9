"""Plain allows summarised per subject, session, rule and interval instead of one entry each.

An allow is *plain* when no grant was used, its rule asks for nothing above a baseline sign-in
(no level above aal1, no freshness, scope, single use or binding) and the risk level is low.
Every other decision (step-ups, denies, allows under a requirement or spending a grant) stays its
own sealed entry. With `audit.allows: every_request` plain allows are single entries too (PCI
DSS 10.2.1: individual user access to cardholder data; see docs/configuration.md).

`note` costs a dict lookup and an increment under a lock. The audit writer's thread asks for the
closed intervals (`due`) and seals one entry per key: kind `decision`, decision `allow`, outcome
`allow_summary`, `at` the last allow's time, detail `count`, `first`, `last`, `interval`, up to
`PATH_SAMPLE` distinct paths, the same as `requests` ([method, path, count]; `unlisted` counts
the rest) and, for what-if replay (`audit.replay`), the decision's `input`.

A key also holds the client IP and an `input_mark` (what the caller says distinguishes one
decision input from another: the session's events, the risk): a session that steps up or whose
risk changes mid-interval starts a new entry, so each entry's recorded input is exact for every
request it counts. The client IP is pseudonymised when an `ip_key` is given.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from stepguard.audit.ledger import AuditEvent, AuditKind, pseudonymise_ip

PATH_SAMPLE = 10

Who = tuple[str, str, str, str, object]  # subject, session, rule, ip, input mark
Key = tuple[Who, int]  # and the interval


@dataclass(slots=True)
class _Open:
    host: str
    method: str
    first: float
    last: float
    count: int = 0
    paths: list[str] = field(default_factory=list)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    unlisted: int = 0
    input: Any = None


class AllowSummary:
    def __init__(self, interval: float = 60.0, *, ip_key: bytes | None = None) -> None:
        if interval <= 0:
            raise ValueError("the summary interval must be positive")
        self.interval = interval
        self.ip_key = ip_key
        self._open: dict[Key, _Open] = {}
        self._lock = threading.Lock()

    def note(self, *, subject: str, session: str, rule: str, at: float, host: str,
             method: str, path: str, ip: str = "", input_mark: object = None,
             input: Any = None) -> None:
        """Count one plain allow. `input` (kept by reference, for replay) is taken from the
        first allow of its key; `input_mark` must change whenever it would differ."""
        self.count((subject, session, rule, ip, input_mark), at=at, host=host, method=method,
                   path=path, input=input)

    def count(self, who: Who, *, at: float, host: str, method: str, path: str,
              input: Any = None, times: int = 1) -> None:
        """`note` for a `who` built once (a plain allow given again builds nothing), `times`
        allows of the same request at once."""
        key = (who, math.floor(at / self.interval))
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                entry = self._open[key] = _Open(host, method, at, at, input=input)
            entry.count += times
            if at > entry.last:
                entry.last = at
            hit = (method, path)
            seen = entry.requests.get(hit)
            if seen is not None:
                entry.requests[hit] = seen + times
            elif len(entry.requests) < PATH_SAMPLE:
                entry.requests[hit] = times
                if path not in entry.paths:
                    entry.paths.append(path)
            else:
                entry.unlisted += times

    @property
    def pending(self) -> int:
        """Allows noted and not yet handed out as entries."""
        return sum(entry.count for entry in list(self._open.values()))

    def next_due(self) -> float | None:
        """When the oldest open interval closes (None when nothing is open)."""
        with self._lock:
            if not self._open:
                return None
            return (min(key[1] for key in self._open) + 1) * self.interval

    def due(self, now: float) -> list[AuditEvent]:
        """Entries for every interval that closed by `now` (they are forgotten here)."""
        current = math.floor(now / self.interval)
        return self._take(lambda key: key[1] < current)

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
        (subject, session, rule, ip, _), _ = key
        if ip and self.ip_key is not None:
            ip = pseudonymise_ip(ip, key=self.ip_key)
        detail: dict[str, Any] = {
            "count": entry.count, "first": entry.first, "last": entry.last,
            "interval": self.interval, "paths": list(entry.paths),
            "requests": [[m, p, n] for (m, p), n in entry.requests.items()],
            "unlisted": entry.unlisted}
        if entry.input is not None:
            detail["input"] = entry.input
            if hasattr(entry.input, "risk_detail"):
                detail.update(entry.input.risk_detail())
        return AuditEvent(
            at=entry.last, kind=AuditKind.DECISION, subject=subject, session=session,
            request={"method": entry.method, "host": entry.host, "client_ip": ip},
            decision="allow", rule=rule, outcome="allow_summary", detail=detail,
        )
