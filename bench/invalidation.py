"""Session-cache invalidation options, measured on SQLite and on PostgreSQL over TCP.

For a cached session, what each request pays to know its copy is still valid, and what a miss
costs to load, by design:

* **global epoch** (the design this replaced): one primary-key read of a store-wide counter per
  request. Cheap per request, but *every* sign-in, step-up, grant or risk change anywhere moves
  it and empties every instance's cache, so under churn nearly every request is a miss.
* **per-session versions** (shipped, `SessionStates.read`): one indexed read of the session's
  and its user's versions per request; a second statement loads the session only when they
  moved. Only a change to this session or this user invalidates it. On PostgreSQL it runs as a
  libpq prepared statement on a held connection (`storage.pg_statements`); the same statement
  through a psycopg cursor (the layer it replaced) is printed beside it, with the client CPU
  each costs (what the instance's event loop pays; the rest of the wall time is the round trip).
* **push** (PostgreSQL LISTEN/NOTIFY or Redis pub/sub): no read per request; the cost moves to a
  delivery window in which another instance still allows a revoked session, unless the revoking
  call waits for every instance to acknowledge (a fence; unbounded while one is partitioned, so
  it needs leases). The delivery delay is measured here, and what the fence would add to every
  version-raising write (sign-in, step-up, grant, revocation): a counter row locked to the
  commit numbers the notification in commit order, each instance's listener writes its ack,
  and the writer polls until every instance has acked its number.

Misses: the replaced load (a pooled SQLAlchemy transaction: pre-ping, BEGIN, session by token,
its events, user, grants, history, COMMIT) beside the shipped single statement.

Run: `python bench/invalidation.py` (about 20 s; starts its own PostgreSQL).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]

import psycopg  # noqa: E402
from sqlalchemy import text  # noqa: E402
from tests.contract import build  # noqa: E402
from tests.support.postgres import create_database, running_postgres  # noqa: E402

from stepguard.core.levels import Level  # noqa: E402
from stepguard.storage.migrate import upgrade  # noqa: E402
from stepguard.storage.records import SessionRecord  # noqa: E402
from stepguard.storage.session_states import UNKNOWN  # noqa: E402
from stepguard.storage.sql import SqlStore  # noqa: E402

NOW = build.NOW
EPOCH_TABLE = "CREATE TABLE IF NOT EXISTS bench_epoch (id INTEGER PRIMARY KEY, value BIGINT)"
EPOCH_READ = "SELECT value FROM bench_epoch WHERE id = 1"
VERSIONS_READ = """SELECT s.version, u.version, s.last_seen FROM sessions s
JOIN users u ON u.id = s.user_id WHERE s.token_hash = {key} AND s.revoked_at IS NULL"""


@dataclass(frozen=True)
class Timing:
    label: str
    samples: tuple[float, ...]  # seconds

    def us(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    @property
    def mean_us(self) -> float:
        return statistics.fmean(self.samples) * 1e6

    cpu_us: float = float("nan")  # client CPU per call

    def line(self) -> str:
        return (f"{self.label:<58}{self.mean_us:>9.1f}{self.us(0.5):>9.1f}{self.us(0.99):>9.1f}"
                f"{self.cpu_us:>9.1f}")


def timed(label: str, action: Callable[[], object], count: int) -> Timing:
    for _ in range(min(50, count)):
        action()
    samples = []
    cpu = time.process_time()
    for _ in range(count):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return Timing(label, tuple(samples), (time.process_time() - cpu) / count * 1e6)


def seeded(store: SqlStore) -> SessionRecord:
    user = build.user(f"bench-{build.new_id()[:8]}")
    store.users.add(user)
    session = build.session(user.id, events=(build.event(), build.event("totp", Level.AAL2)))
    store.sessions.add(session)
    store.grants.add(build.grant(session.id, subject_id=user.id, expires_at=NOW + 3600))
    store.history.record_success(user.id, device_id="d", network_prefix="192.0.2.0/24",
                                 country="FR", location=None, at=NOW, hour=3)
    return session


def epoch_reader(store: SqlStore) -> Callable[[], object]:
    """The replaced per-request read: a store-wide counter on a dedicated connection."""
    with store.engine.begin() as connection:
        connection.execute(text(EPOCH_TABLE))
        connection.execute(text("DELETE FROM bench_epoch"))
        connection.execute(text("INSERT INTO bench_epoch VALUES (1, 0)"))
    raw = store.engine.raw_connection()
    driver = raw.driver_connection
    if store.engine.dialect.name == "postgresql":
        driver.autocommit = True  # type: ignore[union-attr]
    else:
        driver.isolation_level = None  # type: ignore[union-attr]

    def read() -> object:
        cursor = driver.cursor()  # type: ignore[union-attr]
        cursor.execute(EPOCH_READ)
        row = cursor.fetchone()
        cursor.close()
        return row

    return read


def cursor_reader(store: SqlStore, session: SessionRecord) -> Callable[[], object]:
    """The replaced query layer of the per-request read: the same statement through a psycopg
    (or sqlite3) cursor on a held autocommit connection."""
    raw = store.engine.raw_connection()
    driver = raw.driver_connection
    postgres = store.engine.dialect.name == "postgresql"
    if postgres:
        driver.autocommit = True  # type: ignore[union-attr]
    else:
        driver.isolation_level = None  # type: ignore[union-attr]
    sql = VERSIONS_READ.format(key="%(key)s" if postgres else ":key")

    def read() -> object:
        cursor = driver.cursor()  # type: ignore[union-attr]
        cursor.execute(sql, {"key": session.token_hash})
        row = cursor.fetchone()
        cursor.close()
        return row

    return read


def old_load(store: SqlStore, session: SessionRecord) -> Callable[[], object]:
    """The replaced miss path: one pooled read transaction, five statements."""
    def load() -> object:
        with store.snapshot():
            record = store.sessions.by_token_hash(session.token_hash)
            assert record is not None
            user = store.users.get(record.user_id)
            grants = store.grants.active_for_session(record.id, now=NOW)
            history = store.history.load(record.user_id)
        return record, user, grants, history

    return load


def measure(name: str, url: str, count: int) -> list[Timing]:
    upgrade(url)
    store = SqlStore.from_url(url)
    try:
        session = seeded(store)
        states = store.session_states
        snapshot = states.read(session.token_hash, now=NOW)
        known = snapshot.versions.pair  # type: ignore[union-attr]
        return [
            timed(f"{name}: hit, global epoch read (replaced)", epoch_reader(store), count),
            timed(f"{name}: hit, versions read, cursor (replaced)",
                  cursor_reader(store, session), count),
            timed(f"{name}: hit, per-session versions read (shipped)",
                  lambda: states.read(session.token_hash, known=known, now=NOW), count),
            timed(f"{name}: hit, push cache (no read)", lambda: None, count),
            timed(f"{name}: miss, pooled 5-statement load (replaced)",
                  old_load(store, session), count),
            timed(f"{name}: miss, one-statement load (shipped)",
                  lambda: states.read(session.token_hash, known=UNKNOWN, now=NOW), count),
        ]
    finally:
        store.close()


def notify_delays(url: str, count: int) -> Timing:
    """LISTEN/NOTIFY: commit of a revoking UPDATE + NOTIFY returned → listener has it."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute("LISTEN stepguard_bench")
    arrived: list[float] = []
    got = threading.Event()

    def listen() -> None:
        with contextlib.suppress(psycopg.Error):
            for _ in listener.notifies():
                arrived.append(time.perf_counter())
                got.set()

    threading.Thread(target=listen, daemon=True).start()
    writer = psycopg.connect(dsn)
    delays = []
    for _ in range(count):
        got.clear()
        writer.execute("UPDATE sessions SET version = version + 1 WHERE id = 'none'")
        writer.execute("SELECT pg_notify('stepguard_bench', 's')")
        writer.commit()
        committed = time.perf_counter()
        if not got.wait(5):
            raise RuntimeError("a notification did not arrive within 5 s")
        delays.append(arrived[-1] - committed)
    writer.close()
    return Timing("PostgreSQL: NOTIFY delivery window (commit → listener)", tuple(delays))


FENCE_SETUP = (
    "CREATE TABLE IF NOT EXISTS bench_fence (id INTEGER PRIMARY KEY, seq BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_acks (instance TEXT PRIMARY KEY, acked BIGINT NOT NULL)",
    "DELETE FROM bench_fence", "INSERT INTO bench_fence VALUES (1, 0)", "DELETE FROM bench_acks",
)


def fence_waits(url: str, count: int, instances: int = 2) -> Timing:
    """The push design's fence, prototyped: the writer's version-raising commit (its counter
    row locked to the commit, NOTIFY with the number) → every instance's listener acks by an
    UPDATE → the writer's poll (every 0.2 ms) sees every ack. What each such write would wait."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as setup:
        for statement in FENCE_SETUP:
            setup.execute(statement)
    stop = threading.Event()
    listeners = [psycopg.connect(dsn, autocommit=True) for _ in range(instances)]

    def listen(number: int, connection: psycopg.Connection[tuple[object, ...]]) -> None:
        connection.execute("INSERT INTO bench_acks VALUES (%s, 0)", (str(number),))
        connection.execute("LISTEN stepguard_fence")
        with contextlib.suppress(psycopg.Error):
            while not stop.is_set():
                last = None
                for note in connection.notifies(timeout=0.2, stop_after=1):
                    last = note.payload
                if last is not None:
                    connection.execute("UPDATE bench_acks SET acked = %s WHERE instance = %s",
                                       (int(last), str(number)))

    threads = [threading.Thread(target=listen, args=(n, c), daemon=True)
               for n, c in enumerate(listeners)]
    for thread in threads:
        thread.start()
    writer = psycopg.connect(dsn)
    time.sleep(0.5)
    waits = []
    for _ in range(count):
        writer.execute("UPDATE sessions SET version = version + 1 WHERE id = 'none'")
        seq = writer.execute("UPDATE bench_fence SET seq = seq + 1 RETURNING seq").fetchone()
        writer.execute("SELECT pg_notify('stepguard_fence', %s)", (str(seq[0]),))  # type: ignore[index]
        writer.commit()
        committed = time.perf_counter()
        while writer.execute("SELECT count(*) FROM bench_acks WHERE acked < %s",
                             (seq[0],)).fetchone()[0]:  # type: ignore[index]
            writer.commit()
            time.sleep(0.0002)
        writer.commit()
        waits.append(time.perf_counter() - committed)
    stop.set()
    for thread in threads:
        thread.join()
    for connection in (writer, *listeners):
        connection.close()
    return Timing(f"PostgreSQL: fence wait per write ({instances} instances ack)", tuple(waits))


@contextlib.contextmanager
def databases(workdir: Path) -> Iterator[tuple[str, str]]:
    with running_postgres() as postgres:
        yield f"sqlite:///{workdir / 'bench.db'}", create_database(postgres.url(), prefix="inv")


def report(timings: list[Timing]) -> str:
    lines = [f"{'invalidation (µs per request)':<58}{'mean':>9}{'p50':>9}{'p99':>9}{'cpu':>9}"]
    lines += [t.line() for t in timings]
    return "\n".join(lines)


def main() -> int:
    import tempfile

    count = 2000
    with tempfile.TemporaryDirectory() as folder, databases(Path(folder)) as (sqlite, postgres):
        timings = [*measure("SQLite", sqlite, count), *measure("PostgreSQL/TCP", postgres, count),
                   notify_delays(postgres, 300), fence_waits(postgres, 300)]
    print(report(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
