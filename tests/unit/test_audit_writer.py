"""The audit writer: off the hot path, in order, never dropping an entry, surviving an outage."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stepguard.audit.ledger import AuditEntry, AuditEvent, seal_chain, verify_chain
from stepguard.audit.writer import AuditWriter
from stepguard.core.errors import StoreUnavailable
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.audit_tables import audit_checkpoints, audit_entries, audit_head
from stepguard.storage.engine import make_engine, metadata

T0 = 1_714_564_800.0


def event(n: int, *, at: float | None = None) -> AuditEvent:
    when = T0 + n if at is None else at
    return AuditEvent(at=when, kind="decision", subject=f"user{n % 7}", detail={"n": n})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    metadata.create_all(engine, tables=[audit_entries, audit_head, audit_checkpoints])
    yield engine
    engine.dispose()


def quiet(_error: Exception, _delay: float) -> None:
    pass


def numbers(log: SqlAuditLog) -> list[int]:
    return [entry.detail["n"] for entry in log.entries()]


class GatedSink:
    """An in-memory sink whose writes wait until the gate opens (a slow or stuck store)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.writing = threading.Event()  # a batch was taken and waits at the gate
        self.entries: list[AuditEntry] = []

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        self.writing.set()
        self.gate.wait()
        last = self.entries[-1] if self.entries else None
        sealed = seal_chain(
            events, after_seq=last.seq if last else 0, prev_hash=last.hash if last else "0" * 64
        )
        self.entries.extend(sealed)
        return sealed


def test_close_writes_everything_in_order(engine: Engine) -> None:
    log = SqlAuditLog(engine)
    writer = AuditWriter(log, batch_size=64)
    for n in range(1, 1001):
        writer.submit(event(n))
    writer.close(timeout=30)
    assert numbers(log) == list(range(1, 1001))
    assert verify_chain(log.entries()).ok
    assert writer.backlog == 0 and writer.unwritten() == []


def test_flush_waits_for_what_was_submitted(engine: Engine) -> None:
    log = SqlAuditLog(engine)
    with AuditWriter(log) as writer:
        for n in range(1, 11):
            writer.submit(event(n))
        writer.flush(timeout=10)
        assert log.count() == 10
        writer.submit(event(11))
        writer.flush(timeout=10)
        assert log.count() == 11


def test_many_producers_lose_nothing(engine: Engine) -> None:
    log = SqlAuditLog(engine)
    writer = AuditWriter(log, capacity=50, batch_size=16)

    def produce(base: int) -> None:
        for n in range(base, base + 100):
            writer.submit(event(n, at=T0))

    threads = [threading.Thread(target=produce, args=(1000 * t,)) for t in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close(timeout=30)
    assert sorted(numbers(log)) == sorted(
        n for t in range(1, 7) for n in range(1000 * t, 1000 * t + 100)
    )
    assert verify_chain(log.entries()).ok


def test_a_full_queue_blocks_the_producer_rather_than_dropping() -> None:
    sink = GatedSink()
    writer = AuditWriter(sink, capacity=3, batch_size=2)
    writer.submit(event(1), timeout=1)
    # The thread took event 1 alone and is stuck writing it (it lingers 20 ms for more first:
    # had event 2 come meanwhile, both would go in one batch and the queue would not fill).
    assert sink.writing.wait(5)
    for n in range(2, 5):  # the queue is now full
        writer.submit(event(n), timeout=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="full"):
        writer.submit(event(5), timeout=0.2)
    assert time.monotonic() - started >= 0.2
    released = threading.Thread(target=writer.submit, args=(event(5),))
    released.start()  # blocks until the queue drains …
    time.sleep(0.05)
    assert released.is_alive()
    sink.gate.set()  # … which it does once the store answers
    released.join(timeout=5)
    assert not released.is_alive()
    writer.close(timeout=5)
    assert [entry.detail["n"] for entry in sink.entries] == [1, 2, 3, 4, 5]


def test_a_store_outage_keeps_entries_and_resumes(engine: Engine) -> None:
    log = SqlAuditLog(engine)
    errors: list[Exception] = []
    writer = AuditWriter(
        log,
        batch_size=8,
        retry_initial=0.01,
        retry_max=0.05,
        on_error=lambda error, _delay: errors.append(error),
    )
    writer.submit(event(1))
    writer.flush(timeout=5)
    with engine.begin() as connection:  # the table goes away: every write now fails
        connection.execute(text("ALTER TABLE audit_entries RENAME TO audit_entries_away"))
    for n in range(2, 40):
        writer.submit(event(n))
    with pytest.raises(StoreUnavailable, match="not written"):
        writer.flush(timeout=0.3)
    assert writer.backlog == 38
    assert isinstance(writer.last_error, StoreUnavailable) and errors
    with engine.begin() as connection:  # the store comes back
        connection.execute(text("ALTER TABLE audit_entries_away RENAME TO audit_entries"))
    writer.flush(timeout=10)
    assert writer.last_error is None and writer.backlog == 0
    writer.close(timeout=5)
    assert numbers(log) == list(range(1, 40))
    assert verify_chain(log.entries()).ok


def test_close_during_an_outage_says_what_was_not_written(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet" / "audit.db"  # the directory does not exist: no store at all
    engine = make_engine(f"sqlite:///{missing}")
    writer = AuditWriter(SqlAuditLog(engine), retry_initial=0.01, retry_max=0.02, on_error=quiet)
    for n in range(1, 6):
        writer.submit(event(n))
    with pytest.raises(StoreUnavailable, match="5 audit entries"):
        writer.close(timeout=0.3)
    assert [pending.detail["n"] for pending in writer.unwritten()] == [1, 2, 3, 4, 5]
    with pytest.raises(StoreUnavailable, match="closed"):
        writer.submit(event(6))
    engine.dispose()


def test_a_store_that_appears_later_receives_everything(tmp_path: Path) -> None:
    path = tmp_path / "later" / "audit.db"
    engine = make_engine(f"sqlite:///{path}")
    log = SqlAuditLog(engine)
    writer = AuditWriter(log, retry_initial=0.01, retry_max=0.05, on_error=quiet)
    for n in range(1, 21):
        writer.submit(event(n))
    time.sleep(0.1)
    path.parent.mkdir()
    metadata.create_all(engine, tables=[audit_entries, audit_head, audit_checkpoints])
    writer.close(timeout=10)
    assert numbers(log) == list(range(1, 21))
    engine.dispose()


def test_submit_after_close_is_refused(engine: Engine) -> None:
    writer = AuditWriter(SqlAuditLog(engine))
    writer.close(timeout=5)
    writer.close(timeout=5)  # idempotent
    with pytest.raises(StoreUnavailable):
        writer.submit(event(1))


def test_asubmit_does_not_block_the_event_loop() -> None:
    sink = GatedSink()
    writer = AuditWriter(sink, capacity=2, batch_size=1)

    async def main() -> float:
        for n in range(1, 4):  # 1 in flight, 2 queued: the queue is now full
            await writer.asubmit(event(n))
            await asyncio.sleep(0.01)
        pending = asyncio.ensure_future(writer.asubmit(event(4)))
        ticks = 0
        while not pending.done() and ticks < 10:  # the loop keeps running meanwhile
            await asyncio.sleep(0.01)
            ticks += 1
        sink.gate.set()
        await pending
        return ticks

    assert asyncio.run(main()) == 10
    writer.close(timeout=5)
    assert [entry.detail["n"] for entry in sink.entries] == [1, 2, 3, 4]
