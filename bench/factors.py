"""Per-verification cost of each factor, and the grant-consume round trip on SQLite and PostgreSQL.

Run: `python bench/factors.py` (part of `make bench`). The factor figures come from
`bench/factors_pure.py`; the store figures time `Grants.add` + `Grants.consume` (the atomic
single-use spend) on a migrated store, beside a bare `SELECT 1` on the same engine as the anchor.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from sqlalchemy import text  # noqa: E402
from tests.support.postgres import create_database, running_postgres  # noqa: E402

from stepguard.core.grant import Grant  # noqa: E402
from stepguard.core.levels import Level  # noqa: E402
from stepguard.storage.migrate import upgrade  # noqa: E402
from stepguard.storage.records import SessionRecord, UserRecord  # noqa: E402
from stepguard.storage.sql import SqlStore  # noqa: E402

ROUNDS = 400


def _seed(store: SqlStore) -> None:
    store.users.add(UserRecord(id="u1", username="bench", created=0.0))
    store.sessions.add(
        SessionRecord(id="s1", token_hash="h", user_id="u1", created=0.0, last_seen=0.0)
    )


def _grant(i: int) -> Grant:
    return Grant(
        id=f"g{i}", subject_id="u1", session_id="s1", scope="bench", level=Level.AAL2,
        amr=("otp",), granted_at=1.0, expires_at=10.0**10, single_use=True, binding="",
        factor="totp"
    )


def _consume_round_trip(store: SqlStore) -> list[float]:
    timings = []
    for i in range(ROUNDS):
        start = time.perf_counter()
        store.grants.add(_grant(i))
        assert store.grants.consume(f"g{i}", session_id="s1", now=2.0)
        timings.append(time.perf_counter() - start)
    return timings


def _select_one(store: SqlStore) -> list[float]:
    timings = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        timings.append(time.perf_counter() - start)
    return timings


def _report(name: str, store: SqlStore) -> None:
    _seed(store)
    consume, anchor = _consume_round_trip(store), _select_one(store)
    c50, a50 = statistics.median(consume) * 1e6, statistics.median(anchor) * 1e6
    c99 = sorted(consume)[int(len(consume) * 0.99)] * 1e6
    print(
        f"{name:10} grant add+consume: p50 {c50:8.0f} µs  p99 {c99:8.0f} µs | "
        f"anchor SELECT 1: p50 {a50:6.0f} µs ({c50 / a50:5.1f}×)"
    )


def main() -> int:
    subprocess.run([sys.executable, str(ROOT / "bench" / "factors_pure.py")], check=True)
    print("\nGrant consume round trip (two transactions: add, then the atomic consume):")
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        store = SqlStore.from_url(url)
        _report("sqlite", store)
        store.close()
    with running_postgres() as server:
        url = create_database(server.url(), prefix="bench")
        upgrade(url)
        store = SqlStore.from_url(url)
        _report("postgresql", store)
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
