"""What the door's event loop remembers for the allows it gives again.

A remembered plain allow is given again only while the session's and user's versions are those
it was decided under, read for each statement after it was read from its socket, so a
revocation committed before a statement arrived stops it (SECURITY case 12: the very next
statement). The read is the guard's (`Guard.lease`) or, while the lease the guard gave holds, one
look at the version board: the mark the versions were confirmed under, unchanged, means no write
touched them since. Without a board (a PostgreSQL store) a read answers the session's statements
in the same loop turn for `READ_SHARED_FOR` (a millisecond) after it began. The clock is read
for each statement: its allow's end, its count's time, and the held counts due.

The allows it gives again are counted and handed to the audit (`Guard.audit`) in batches: an
allow that is its own sealed entry when its turn ends; one counted on a summary line at the
latest by `Guard.audit_due` (within a second, and well before its summary interval closes, so
a batch never spans two intervals), by a timer when no turn comes, and whenever the audit is
flushed or closed (`AuditWriter.counts_held_by`: the counts are taken under a lock on the
caller's thread, so a clean stop loses nothing even while the loop is busy or stopped). Each
answer's first and last time in a batch reach its summary line. Compiled with the door's
connection when built (scripts/accelerate.py).
"""

from __future__ import annotations

import asyncio
import threading

from stepguard.core.context import RequestContext
from stepguard.service.guard import SUMMARY_MARGIN, Answer, Guard
from stepguard.service.runtime import Runtime
from stepguard.storage.version_board import Mark

NOTHING_HELD = float("inf")  # `due` while no count is held
LEASES = 4096  # sessions whose lease the door remembers (then it starts afresh)
READ_SHARED_FOR = 0.001  # seconds a versions read without a lease answers later statements
_Leased = tuple[float, float, str, str, Mark, tuple[int, int]]


class Held:
    """The counts of one answer held for the audit: how many, the first and the last time."""

    __slots__ = ("answer", "times", "first", "last")

    def __init__(self, answer: Answer, now: float) -> None:
        self.answer = answer
        self.times = 1
        self.first = self.last = now


class Turn:
    def __init__(self, guard: Guard, runtime: Runtime) -> None:
        self.guard = guard
        self.rt = runtime
        self.now = -1.0  # the turn's time; -1: no turn open
        # session key → its lease (`Guard.lease`: since, until, session id, user id, mark,
        # versions; a tuple, read natively when compiled), kept across turns
        self.leases: dict[str, _Leased] = {}
        self.shared: dict[str, tuple[float, tuple[int, int]]] = {}  # this turn's other reads
        self.clock = runtime.clock  # `Runtime.now` without the method call
        self.board = guard.board
        self.hits = 0  # versions taken from leases, not yet counted as cache hits
        self.counts: dict[int, Held] = {}  # id(answer) → its counts, taken by any thread
        self.due = NOTHING_HELD  # when the held counts go to the audit at the latest
        self.lock = threading.Lock()  # over `counts` and `due`
        self.loop: asyncio.AbstractEventLoop | None = None
        runtime.audit.counts_held_by(self.hand_over)

    def again(self, key: str, answer: Answer, versions: tuple[int, int]) -> bool:
        """Whether the remembered plain allow `answer`, decided at the session's `versions`,
        is given again now: before its end (`answer.until`) and while the session's and
        user's versions are still `versions`. Counted for the audit when it is."""
        at = self.clock()  # this statement's own reading (the turn may have blocked since)
        if self.now < 0:
            self.now = at
            loop = self.loop = asyncio.get_running_loop()
            loop.call_soon(self.end)  # first: the turn ends whatever happens next
        if at > self.due:  # the held counts are due: handed over before this one is counted
            self.hand_over()
        if at >= answer.until:
            return False
        found = self._versions(key, answer.context, at)
        if found is None or found != versions:
            return False
        self._count(answer, at)
        return True

    def _versions(self, key: str, context: RequestContext,
                  at: float) -> tuple[int, int] | None:
        """The session's versions as of now, for a statement already read (the clock read
        afresh: a turn may have blocked in a store read since it began): its lease's while
        that holds — one look at the board — else the guard's, with a new lease. A read
        without a lease (no board) answers the session's statements in the same turn for
        `READ_SHARED_FOR` after it began. None: take the full path."""
        leased = self.leases.get(key)
        if leased is not None:
            since, until, session_id, user_id, mark, versions = leased
            board = self.board
            assert board is not None  # only a board's leases outlive their reading
            if since <= at < until and board.mark(session_id, user_id) == mark:
                with self.lock:
                    self.hits += 1
                return versions
        shared = self.shared.get(key)
        if shared is not None and shared[0] <= at < shared[0] + READ_SHARED_FOR:
            return shared[1]
        lease = self.guard.lease(key, context)
        if lease is None:
            self.leases.pop(key, None)
            self.shared.pop(key, None)
            return None
        if lease.until > at and lease.mark is not None:
            if len(self.leases) >= LEASES:
                self.leases.clear()
            self.leases[key] = (lease.since, lease.until, lease.session_id, lease.user_id,
                                lease.mark, lease.versions)
        else:
            self.shared[key] = (at, lease.versions)
        return lease.versions

    def _count(self, answer: Answer, now: float) -> None:
        lock = self.lock
        lock.acquire()
        try:
            held = self.counts.get(id(answer))
            if held is not None:
                held.times += 1
                held.last = now
                return
            self.counts[id(answer)] = Held(answer, now)
            due = self.guard.audit_due(answer, now)
            if due >= self.due:
                return
            self.due = due
        finally:
            lock.release()
        if due > now and self.loop is not None:  # no turn may come before then
            self.loop.call_later(due - now, self.hand_over)

    def end(self) -> None:
        """The turn is over: its memory is dropped, and the counts that are due handed over."""
        now, self.now = self.now, -1.0
        self.shared.clear()
        if now >= self.due:
            self.hand_over()

    def hand_over(self) -> None:
        """Every held count to the audit, from any thread (the loop's, or a flush's or close's).
        A batch handed over later than it was due may belong to an interval the audit writer
        has closed already: the writer is woken to seal it at once."""
        with self.lock:
            counts, self.counts = self.counts, {}
            due, self.due = self.due, NOTHING_HELD
            hits, self.hits = self.hits, 0
        if hits:
            self.guard.leased(hits)
        for held in counts.values():
            self.guard.audit(held.answer, held.first)
            if held.times > 1:
                self.guard.audit(held.answer, held.last, held.times - 1)
        if counts and self.clock() > due + SUMMARY_MARGIN:
            self.rt.audit.wake()
