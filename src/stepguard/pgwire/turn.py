"""What one turn of the event loop remembers for the door's allows given again.

Every statement a turn handles arrived before the turn began, so one read of a session's versions
per turn serves them all and still honours a revocation committed before any of them arrived
(SECURITY case 12: the very next statement). The turn also reads the clock once.

The allows it gives again are counted and handed to the audit (`Guard.audit`) in batches: an
allow that is its own sealed entry when its turn ends; one counted on a summary line at the
latest by `Guard.audit_due` (within a second, and well before its summary interval closes, so
a batch never spans two intervals), by a timer when no turn comes, and whenever the audit is
flushed or closed (`AuditWriter.counts_held_by`) — a clean stop loses nothing. Compiled with the
door's connection when built (scripts/accelerate.py).
"""

from __future__ import annotations

import asyncio
import threading

from stepguard.service.guard import Answer, Guard
from stepguard.service.runtime import Runtime

NOTHING_HELD = float("inf")  # `due` while no count is held
HAND_OVER_WAIT = 2.0  # seconds a flush from another thread waits for the loop to hand over


class Turn:
    def __init__(self, guard: Guard, runtime: Runtime) -> None:
        self.guard = guard
        self.rt = runtime
        self.now = -1.0  # the turn's time; -1: no turn open
        self.versions: dict[str, tuple[int, int]] = {}  # session key → (session, user) versions
        self.counts: dict[int, tuple[Answer, int, float]] = {}  # id → (answer, times, last at)
        self.due = NOTHING_HELD  # when the held counts go to the audit at the latest
        self.loop: asyncio.AbstractEventLoop | None = None
        runtime.audit.counts_held_by(self.settle)

    def again(self, key: str, answer: Answer, versions: tuple[int, int]) -> bool:
        """Whether the remembered plain allow `answer`, decided at the session's `versions`,
        is given again now: before its end (`answer.until`) and while the session's and
        user's versions are still `versions`. Counted for the audit when it is."""
        now = self.now
        if now < 0:
            now = self.now = self.rt.now()
            if now >= self.due:  # held counts are older than this turn: handed over first
                self.hand_over()
            loop = self.loop = asyncio.get_running_loop()
            loop.call_soon(self.end)
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
        self._count(answer, now)
        return True

    def _count(self, answer: Answer, now: float) -> None:
        counted = self.counts.get(id(answer))
        if counted is not None:
            self.counts[id(answer)] = (answer, counted[1] + 1, now)
            return
        self.counts[id(answer)] = (answer, 1, now)
        due = self.guard.audit_due(answer, now)
        if due < self.due:
            self.due = due
            if due > now and self.loop is not None:  # no turn may come before then
                self.loop.call_later(due - now, self.hand_over)

    def end(self) -> None:
        """The turn is over: its memory is dropped, and the counts that are due handed over."""
        now, self.now = self.now, -1.0
        self.versions.clear()
        if now >= self.due:
            self.hand_over()

    def hand_over(self) -> None:
        """Every held count to the audit (on the loop's thread)."""
        counts, self.counts = self.counts, {}
        self.due = NOTHING_HELD
        for answer, times, at in counts.values():
            self.guard.audit(answer, at, times)

    def settle(self) -> None:
        """`hand_over` from any thread (an audit flush or close): on the loop's own thread, or
        when no loop runs, at once; else by the loop, waited for (`HAND_OVER_WAIT` at most:
        what is not handed over by then stays held, never lost)."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running() or _running() is loop:
            self.hand_over()
            return
        done = threading.Event()

        def hand_over() -> None:
            self.hand_over()
            done.set()

        try:
            loop.call_soon_threadsafe(hand_over)
        except RuntimeError:  # closed meanwhile: nothing runs on it any more
            self.hand_over()
            return
        done.wait(HAND_OVER_WAIT)


def _running() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
