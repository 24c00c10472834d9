"""What one turn of the event loop remembers for the door's allows given again.

Every statement a turn handles arrived before the turn began, so one read of a session's versions
per turn serves them all and still honours a revocation committed before any of them arrived
(SECURITY case 12: the very next statement). The turn also reads the clock once and counts the
allows it gives again, handing the counts to the audit (`Guard.audit`) when it ends — before the
loop reads any new data. Compiled with the door's connection when built (scripts/accelerate.py).
"""

from __future__ import annotations

import asyncio

from stepguard.service.guard import Answer, Guard
from stepguard.service.runtime import Runtime


class Turn:
    def __init__(self, guard: Guard, runtime: Runtime) -> None:
        self.guard = guard
        self.rt = runtime
        self.now = -1.0  # the turn's time; -1: no turn open
        self.versions: dict[str, tuple[int, int]] = {}  # session key → (session, user) versions
        self.counts: dict[int, tuple[Answer, int]] = {}  # id(answer) → (answer, times)

    def again(self, key: str, answer: Answer, versions: tuple[int, int]) -> bool:
        """Whether the remembered plain allow `answer`, decided at the session's `versions`,
        is given again now: before its end (`answer.until`) and while the session's and
        user's versions are still `versions`. Counted for the audit when it is."""
        now = self.now
        if now < 0:
            now = self.now = self.rt.now()
            asyncio.get_running_loop().call_soon(self.end)
        if now >= answer.until:
            return False
        found = self.versions.get(key)
        if found is None:
            found = self.guard.versions_now(key, answer.context)
            if found is None:
                return False
            self.versions[key] = found
        if found != versions:
            return False
        counted = self.counts.get(id(answer))
        self.counts[id(answer)] = (answer, 1 if counted is None else counted[1] + 1)
        return True

    def end(self) -> None:
        """The turn is over: its counts go to the audit, its memory is dropped."""
        now, self.now = self.now, -1.0
        self.versions.clear()
        counts, self.counts = self.counts, {}
        for answer, times in counts.values():
            self.guard.audit(answer, now, times)
