"""The door's loop turn (pgwire/turn.py), as Python and compiled: one versions read per session
per turn, and the allows it gives again handed to the audit in batches that lose nothing — at
the end of their turn for an allow that is its own entry, within a second and before their
summary interval closes for a counted one, by a timer when no turn comes, and on every flush or
close, at once even while the loop is busy."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest

from stepguard.core.context import RequestContext
from stepguard.core.errors import StoreUnavailable
from stepguard.pgwire import turn
from stepguard.service.guard import (
    STORE_CONTACT_EVERY,
    TOUCH_EVERY,
    Answer,
    Guard,
    Lease,
    token_key,
)
from stepguard.service.runtime import Runtime
from tests.support.gateway import Clock
from tests.unit.conftest import Make
from tests.unit.test_guard import PAGE, POLICY, decisions, signed_in, versions_now
from tests.unit.test_pg_roundtrip import IMPLEMENTATIONS, implementation

START = 1_900_000_000.2  # 0.2 s into a second: a batch begun now ends at ...001.0


@pytest.fixture(params=IMPLEMENTATIONS)
def module(request: pytest.FixtureRequest) -> ModuleType:
    return implementation(request, turn)


class Door:
    """A turn on a runtime, with one signed-in session's remembered plain allow."""

    def __init__(self, module: ModuleType, rt: Runtime, context: RequestContext = PAGE,
                 name: str = "alice", beside: Door | None = None) -> None:
        self.rt = rt
        self.guard = beside.guard if beside else Guard(rt)
        self.turn: Any = beside.turn if beside else module.Turn(self.guard, rt)
        _, self.session, token = signed_in(rt, name)
        self.key = token_key(token)
        check = self.guard.check(context, token, audit=False)
        self.answer: Answer = self.guard.answer(check, rt.now() + 3600)
        versions = versions_now(self.guard, self.key, context)
        assert versions is not None
        self.versions = versions

    def again(self) -> bool:
        return bool(self.turn.again(self.key, self.answer, self.versions))

    def counted(self) -> float:
        """Allows the audit has been handed (the metric moves at the hand-over)."""
        return self.rt.observer.decisions.value("allow", self.answer.check.decision.rule or "-")


@pytest.fixture
def door(module: ModuleType, make: Make, clock: Clock) -> Door:
    clock.now = START
    return Door(module, make())


def run(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())


async def handed_over_when_the_turn_ends(door: Door, allows: int) -> None:
    """`allows` allows given again in one turn: none reaches the audit before the turn ends,
    all of them when it has ended."""
    assert all([door.again() for _ in range(allows)])
    assert door.counted() == 0
    await asyncio.sleep(0)
    assert door.counted() == allows


def test_counts_are_held_across_turns_and_handed_over_when_their_second_ends(
        door: Door, clock: Clock) -> None:
    async def body() -> None:
        for _ in range(3):  # three turns within the second
            assert door.again() and door.again()
            await asyncio.sleep(0)  # the turn ends
            clock.advance(0.2)
        assert door.counted() == 0  # held: no hand-over per turn
        clock.now = START + 0.9  # past the second's end
        assert door.again()  # this statement's time is past the batch's end: handed over first
        assert door.counted() == 6
        await asyncio.sleep(0)
        assert door.counted() == 6  # this turn's count is held for the next batch

    run(body)
    [line] = decisions(door.rt)  # the flush at the end handed the last one over
    assert (line.outcome, line.detail["count"]) == ("allow_summary", 7)  # type: ignore[attr-defined]
    assert line.detail["last"] == START + 0.9  # type: ignore[attr-defined]
    assert line.detail["first"] == START  # type: ignore[attr-defined]  # not the batch's last


def test_a_timer_hands_counts_over_when_no_turn_comes(door: Door, clock: Clock) -> None:
    clock.now = START + 0.7  # 0.1 s before the second ends (real seconds: the timer's delay)

    async def body() -> None:
        assert door.again()
        await asyncio.sleep(0)
        assert door.counted() == 0
        await asyncio.sleep(0.3)
        assert door.counted() == 1

    run(body)


def test_counts_near_the_end_of_a_summary_interval_go_when_their_turn_ends(
        module: ModuleType, make: Make, clock: Clock) -> None:
    """Within `SUMMARY_MARGIN` of an interval's end there is no holding: the writer may close
    the interval then, and a count handed over later would open it again."""
    clock.now = 1_900_000_019.8  # the 20-second interval closes at ...20.0
    door = Door(module, make(audit="{summary_interval: 20}"))

    run(lambda: handed_over_when_the_turn_ends(door, 1))


def test_an_allow_that_is_its_own_entry_is_handed_over_when_its_turn_ends(
        module: ModuleType, make: Make, clock: Clock) -> None:
    clock.now = START
    tagged = RequestContext(method="GET", host="app.test", path="/orders",
                            client_ip="198.51.100.7", attributes={"ticket": "T-1"})
    door = Door(module, make(), tagged)
    assert door.answer.who is None

    run(lambda: handed_over_when_the_turn_ends(door, 2))
    assert [e.outcome for e in decisions(door.rt)] == ["allow"] * 2  # type: ignore[attr-defined]


@contextmanager
def serving(door: Door, allows: int) -> Iterator[asyncio.AbstractEventLoop]:
    """A loop in another thread that gave `allows` allows again and waits (the door's loop)."""
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        assert all(door.again() for _ in range(allows))
        ready.set()
        await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    try:
        assert ready.wait(5)
        yield loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_a_flush_from_another_thread_gets_what_the_turn_holds(door: Door) -> None:
    with serving(door, 2):
        [line] = decisions(door.rt)  # `decisions` flushes, from this thread
        assert line.detail["count"] == 2  # type: ignore[attr-defined]


def test_a_flush_when_no_loop_runs_any_more_gets_what_the_turn_holds(door: Door) -> None:
    async def body() -> None:
        assert door.again()

    run(body)  # the loop ends before any hand-over was due
    [line] = decisions(door.rt)
    assert line.detail["count"] == 1  # type: ignore[attr-defined]


def test_a_revocation_stops_the_next_turns_allow(door: Door) -> None:
    async def body() -> None:
        assert door.again()
        await asyncio.sleep(0)
        session = door.answer.check.session
        assert session is not None
        door.rt.store.sessions.revoke(session.id, now=door.rt.now())
        assert not door.again()  # the next turn reads the versions again

    run(body)


def leases_asked(door: Door, monkeypatch: pytest.MonkeyPatch) -> list[Lease | None]:
    """The leases the turn asked the guard for (each one a versions read), as they come."""
    asked: list[Lease | None] = []
    real = door.guard.lease

    def counted(key: str, context: RequestContext) -> Lease | None:
        asked.append(real(key, context))
        return asked[-1]

    monkeypatch.setattr(door.guard, "lease", counted)
    return asked


class CountedBoard:
    """The version board as the turn sees it, counting the turn's looks (a compiled board's
    methods cannot be replaced)."""

    def __init__(self, board: object) -> None:
        self.board = board
        self.looks: list[object] = []

    def mark(self, session_id: str, user_id: str) -> object:
        self.looks.append(self.board.mark(session_id, user_id))  # type: ignore[attr-defined]
        return self.looks[-1]


def turn_looks(door: Door) -> list[object]:
    """Every look the turn itself takes at the version board, as they come."""
    counted = CountedBoard(door.guard.board)
    door.turn.board = counted
    return counted.looks


def test_without_a_board_a_read_answers_the_session_for_a_millisecond_of_its_turn(
        door: Door, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = leases_asked(door, monkeypatch)

    async def body() -> None:
        assert door.again() and door.again()
        clock.advance(turn.READ_SHARED_FOR * 0.9)
        assert door.again()  # within the millisecond: the same read
        assert len(asked) == 1
        clock.advance(turn.READ_SHARED_FOR * 0.2)
        assert door.again()  # no version board (the memory store): the guard reads again
        assert len(asked) == 2
        await asyncio.sleep(0)
        assert door.again()  # and in the next turn
        assert len(asked) == 3
        assert all(lease is not None and lease.until == float("-inf") for lease in asked)

    run(body)


def test_without_a_board_a_revocation_stops_the_statements_after_the_shared_read(
        door: Door, clock: Clock) -> None:
    async def body() -> None:
        assert door.again()
        door.rt.store.sessions.revoke(door.session.id, now=door.rt.now())
        clock.advance(turn.READ_SHARED_FOR)
        assert not door.again()  # in the same turn: the read is not shared past its moment

    run(body)


@pytest.fixture
def board_door(module: ModuleType, make: Make, clock: Clock) -> Door:
    """A door on the SQLite store, which has a version board."""
    clock.now = START
    return Door(module, make(sqlite=True))


def test_a_lease_serves_later_turns_with_one_look_at_the_board(
        board_door: Door, monkeypatch: pytest.MonkeyPatch) -> None:
    door = board_door
    asked, looks = leases_asked(door, monkeypatch), turn_looks(door)

    async def body() -> None:
        for _ in range(3):
            assert door.again() and door.again()
            await asyncio.sleep(0)
        assert len(asked) == 1  # the guard once; then the lease
        assert len(looks) == 5  # then one look a statement: the first was the guard's

    hits = door.guard.cache.hits, door.rt.observer.cache.value("hit")
    run(body)
    door.turn.hand_over()  # the lease's hits are counted with the audit counts
    # the guard's own hit (its read found the copy), then five from the lease: all cache hits
    assert door.guard.cache.hits == hits[0] + 6
    assert door.rt.observer.cache.value("hit") == hits[1] + 6


def test_a_revocation_stops_the_very_next_turn_through_a_lease(
        board_door: Door, monkeypatch: pytest.MonkeyPatch) -> None:
    door = board_door
    asked = leases_asked(door, monkeypatch)

    async def body() -> None:
        for _ in range(2):
            assert door.again()
            await asyncio.sleep(0)
        assert len(asked) == 1
        assert door.again()  # the same turn as the revocation below
        door.rt.store.sessions.revoke(door.session.id, now=door.rt.now())
        assert not door.again()  # the board moved: the guard is asked, and finds no session
        assert asked[-1] is None

    run(body)


def test_a_disabled_user_stops_the_very_next_turn_through_a_lease(board_door: Door) -> None:
    door = board_door

    async def body() -> None:
        for _ in range(2):
            assert door.again()
            await asyncio.sleep(0)
        door.rt.store.users.set_disabled(door.session.user_id, True, now=door.rt.now())
        assert not door.again()

    run(body)


def test_a_lease_taken_while_a_write_was_in_flight_serves_no_later_turn(
        board_door: Door, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mark read while a write is in flight is None, and the board shows None as long as the
    write lasts: such a lease must not be taken again (None == None proves nothing)."""
    door = board_door
    board = door.guard.board
    assert board is not None
    asked = leases_asked(door, monkeypatch)

    async def body() -> None:
        with board.writing([door.session.id]):
            for turn_number in range(1, 4):
                assert door.again()
                assert len(asked) == turn_number  # the guard every turn
                await asyncio.sleep(0)
        assert asked[0] is not None and asked[0].mark is None

    run(body)


def test_a_lease_ends_when_the_guard_must_reach_the_store(
        board_door: Door, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    door = board_door

    async def body() -> None:
        assert door.again()
        await asyncio.sleep(0)

        def down(token_hash: str, **kwargs: Any) -> Any:
            raise StoreUnavailable("the store is down")

        monkeypatch.setattr(door.rt.store.session_states, "read", down)
        clock.advance(STORE_CONTACT_EVERY / 2)
        assert door.again()  # the board answers alone for a while
        await asyncio.sleep(0)
        clock.advance(STORE_CONTACT_EVERY / 2)  # a full second after the guard reached it
        assert not door.again()  # the guard is asked, cannot reach the store: full path

    run(body)


def test_an_allow_is_not_given_again_past_its_end_or_at_other_versions(door: Door,
                                                                       clock: Clock) -> None:
    async def body() -> None:
        stale = (door.versions[0] - 1, door.versions[1])
        assert not door.turn.again(door.key, door.answer, stale)
        await asyncio.sleep(0)
        clock.now = door.answer.until
        assert not door.again()

    run(body)
    assert door.counted() == 0


def test_a_second_allow_in_a_batch_keeps_the_batchs_end(module: ModuleType, make: Make,
                                                        clock: Clock) -> None:
    """Two connections' allows held together: the later one does not move the hand-over."""
    clock.now = START
    rt = make()
    first = Door(module, rt)
    second = Door(module, rt, name="bob", beside=first)

    async def body() -> None:
        assert first.again()
        due = first.turn.due
        clock.advance(0.3)
        await asyncio.sleep(0)
        assert second.again()
        assert first.turn.due == due == 1_900_000_001.0
        await asyncio.sleep(0.9)  # the one timer, set by the first, hands both over
        assert first.counted() + second.counted() >= 2

    run(body)


def test_a_flush_while_the_loop_is_busy_gets_the_counts_at_once(door: Door) -> None:
    """A flush or close takes the held counts on its own thread: a loop stuck in a long callback
    (or stopped) neither delays it nor keeps the counts from it."""
    with serving(door, 2) as loop:
        loop.call_soon_threadsafe(time.sleep, 3)  # the loop is busy for three seconds
        time.sleep(0.1)
        started = time.monotonic()
        [line] = decisions(door.rt)
        assert line.detail["count"] == 2  # type: ignore[attr-defined]
        assert time.monotonic() - started < 1.5


def test_a_late_hand_over_wakes_the_audit_writer(module: ModuleType, make: Make,
                                                clock: Clock) -> None:
    """Counts handed over after their interval closed (a stalled loop) are sealed at once, not
    an interval later: the writer is woken."""
    clock.now = START
    door = Door(module, make(audit="{summary_interval: 20}"))

    async def body() -> None:
        assert door.again()

    run(body)
    time.sleep(0.1)  # the writer sleeps: nothing is open in the summary
    clock.now = START + 25  # the interval closed while the count was held
    door.turn.hand_over()
    deadline = time.monotonic() + 2
    lines: list[Any] = []
    while time.monotonic() < deadline and not lines:
        time.sleep(0.01)
        lines = [e for e in door.rt.audit_log.entries() if e.kind == "decision"]
    [line] = lines  # written by the writer's thread, no flush
    assert line.detail["count"] == 1


@pytest.mark.parametrize(("levels", "wait", "given"), [
    ("aal1: {max_session: 30d, idle: 1h}", TOUCH_EVERY - 0.5, True),  # the session is noted seen
    ("aal1: {max_session: 30d, idle: 10s}", 9.5, False),  # idle too long: signed out
    ("aal1: {max_session: 30m, idle: 1h}", 1799.5, False),  # past its absolute lifetime
])
def test_a_lease_ends_where_the_guard_would_do_more_than_compare(
        module: ModuleType, make: Make, clock: Clock, monkeypatch: pytest.MonkeyPatch,
        levels: str, wait: float, given: bool) -> None:
    """Half a second before a session is due to be noted as seen, or to end, the guard gives a
    lease; 0.7 s later (within the second a store contact lasts) the turn asks it again."""
    clock.now = START
    door = Door(module, make(sqlite=True, policy=POLICY.replace(
        "aal1: {max_session: 30d, idle: 1h}", levels)))
    noted: list[str] = []
    monkeypatch.setattr(door.rt.last_seen, "note", lambda session_id, **_: noted.append(session_id))

    async def body() -> None:
        clock.now = START + wait - 0.1
        assert door.again()  # noted as seen here when it is due (the lease lasts no longer)
        await asyncio.sleep(0)
        clock.now = START + wait
        assert door.again()
        await asyncio.sleep(0)
        del noted[:]
        clock.now = START + wait + 0.7
        assert door.again() is given
        assert noted == ([door.session.id] if given else [])

    run(body)


# ------------------------------------------------------------------ the statement's own clock


@pytest.fixture
def two_doors(module: ModuleType, make: Make, clock: Clock) -> tuple[Door, Door]:
    """Alice's and Bob's sessions on one turn (one door process), on the SQLite store."""
    clock.now = START
    alice = Door(module, make(sqlite=True))
    return alice, Door(module, alice.rt, name="bob", beside=alice)


def store_dies(door: Door, clock: Clock, monkeypatch: pytest.MonkeyPatch,
               stall: float = 0.0) -> None:
    """From now on every store read hangs `stall` seconds (a stalled disk), then fails."""
    def dead(token_hash: str, **kwargs: Any) -> Any:
        clock.advance(stall)
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(door.rt.store.session_states, "read", dead)


def test_a_lease_is_judged_by_the_clock_of_its_statement_not_of_its_turn(
        two_doors: tuple[Door, Door], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn may block in a store read (a stalled disk); a statement read after it, in the
    same turn, is judged by the clock of then: the store contact its lease rests on is over."""
    alice, bob = two_doors
    board = alice.guard.board
    assert board is not None

    async def body() -> None:
        assert bob.again()  # bob's lease: until the store contact is due (START + 1)
        await asyncio.sleep(0)
        clock.advance(0.5)
        with board.writing([alice.session.id]):  # any write on alice's slot (or a collision)
            pass
        store_dies(alice, clock, monkeypatch, stall=2.0)
        assert not alice.again()  # the guard reads the store: a 2 s stall, then it is dead
        assert not bob.again()  # the same turn, 2.5 s in: the guard is asked, and fails

    run(body)


def test_a_lease_ends_when_the_clock_steps_back_before_its_store_contact(
        two_doors: tuple[Door, Door], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease's end is a wall-clock time; after the clock steps back 10 s it would last 11 s
    through a dead store: a reading before the contact it rests on ends it."""
    alice, bob = two_doors
    board = alice.guard.board
    assert board is not None

    async def body() -> None:
        assert bob.again()  # bob's lease: until START + 1
        await asyncio.sleep(0)
        clock.now = START - 10  # the wall clock steps back (NTP, a VM resumed)
        with board.writing([alice.session.id]):
            pass
        assert alice.again()  # a store read (alice's slot moved): the guard's contact is now
        await asyncio.sleep(0)
        store_dies(alice, clock, monkeypatch)
        clock.now = START - 10 + 1.5  # 1.5 s after the last store contact
        assert not bob.again()

    run(body)


def test_a_clock_stepped_back_does_not_stretch_the_store_contact_through_the_guard(
        board_door: Door, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """No other session's read moves the guard's store contact: after the clock steps back the
    statement goes to the guard, whose own board hit must not take a negative time since the
    contact for a recent one (it would hide a dead store for as long as the step)."""
    door = board_door

    async def body() -> None:
        assert door.again()  # the lease: the guard's store contact is START
        await asyncio.sleep(0)
        clock.now = START - 10  # the wall clock steps back (NTP, a VM resumed)
        store_dies(door, clock, monkeypatch)
        clock.now = START - 10 + 1.5
        assert not door.again()

    run(body)


def test_an_allows_end_is_judged_by_the_clock_of_its_statement_not_of_its_turn(
        two_doors: tuple[Door, Door], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer's end (the end of the hour it was decided in: `hour()`, `unusual_hour`) is
    compared with the statement's own clock reading: a store read that blocks in the same turn
    must not let a statement read after it, past the end, be given the old hour's allow."""
    alice, bob = two_doors
    board = alice.guard.board
    assert board is not None
    alice.answer = alice.guard.answer(alice.answer.check, START + 0.5)
    real = alice.rt.store.session_states.read

    def stalled(token_hash: str, **kwargs: Any) -> Any:
        clock.advance(1.0)  # a stalled disk: the read answers a second later
        return real(token_hash, **kwargs)

    async def body() -> None:
        assert alice.again()
        await asyncio.sleep(0)
        with board.writing([bob.session.id]):  # bob's slot moved: his check reads the store
            pass
        monkeypatch.setattr(alice.rt.store.session_states, "read", stalled)
        assert bob.again()  # the turn opens at START; the read ends at START + 1
        assert clock.now >= alice.answer.until
        assert not alice.again()

    run(body)


def test_counts_made_after_a_stall_in_the_turn_do_not_join_a_batch_already_due(
        two_doors: tuple[Door, Door], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch never spans two summary intervals: a count made past the held batch's due time
    (the turn stalled in a store read) hands that batch over first."""
    alice, bob = two_doors
    board = alice.guard.board
    assert board is not None
    real = alice.rt.store.session_states.read

    def stalled(token_hash: str, **kwargs: Any) -> Any:
        clock.advance(1.0)
        return real(token_hash, **kwargs)

    async def body() -> None:
        assert alice.again()  # held: due before START's second ends
        with board.writing([bob.session.id]):
            pass
        monkeypatch.setattr(alice.rt.store.session_states, "read", stalled)
        assert bob.again()  # read at START, judged at START; its store read ends a second later
        assert alice.counted() == 0
        assert alice.again()  # the same turn, a second later: the batch is handed over first
        assert alice.counted() == 2  # alice's first count and bob's, not this one

    run(body)


def test_no_lease_outlives_its_reading_while_a_redis_store_is_watched(
        board_door: Door, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis store known to be down fails every decision closed (`Runtime.require_stores`):
    a lease would skip that check, so none is given while one is watched."""
    door = board_door

    class Watch:
        def require(self) -> None:
            return None

    monkeypatch.setattr(door.rt, "redis_watch", Watch())
    lease = door.guard.lease(door.key, door.answer.context)
    assert lease is not None and lease.mark is not None and lease.until == float("-inf")
