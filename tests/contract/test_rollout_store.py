"""Rollout storage on SQLite and a real PostgreSQL (issue 14): ledger aggregates (summaries
weighted by their JSON count), newest-first filtered pages, time ranges, policy versions, dead
letters, and the migration matching the tables."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, text

from stepguard.audit.ledger import GENESIS_HASH, AuditEvent
from stepguard.notifications.webhook import DeadLetter
from stepguard.storage.audit_stats import AuditStats
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.audit_tables import audit_entries
from stepguard.storage.dead_letters import DeadLetters
from stepguard.storage.engine import make_engine
from stepguard.storage.migrate import upgrade
from stepguard.storage.policy_versions import PolicyVersions, policy_diff
from stepguard.storage.rollout_tables import notification_dead_letters, policy_versions
from tests.support.postgres import create_database, drop_database

T0 = 1_900_000_000.0


@pytest.fixture(scope="module")
def rollout_postgres_url(postgres_url: str) -> Iterator[str]:
    url = create_database(postgres_url, prefix="rollout")
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture
def rollout_postgres_empty(rollout_postgres_url: str) -> str:
    engine = make_engine(rollout_postgres_url)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE audit_entries, policy_versions, "
                                "notification_dead_letters RESTART IDENTITY"))
        connection.execute(text("UPDATE audit_head SET seq = 0, hash = :h"), {"h": GENESIS_HASH})
    engine.dispose()
    return rollout_postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "rollout_postgres_empty"
    return str(request.getfixturevalue(fixture))


def test_the_migration_matches_the_rollout_tables(url: str) -> None:
    mine = MetaData()
    for table in (audit_entries, policy_versions, notification_dead_letters):
        table.to_metadata(mine)
    engine = make_engine(url)
    with engine.connect() as connection:
        only = {"include_name": lambda name, kind, _: kind != "table" or name in mine.tables}
        assert compare_metadata(MigrationContext.configure(connection, opts=only), mine) == []
    engine.dispose()


def test_aggregates_pages_and_time_ranges(url: str) -> None:
    engine = make_engine(url)
    log, stats = SqlAuditLog(engine), AuditStats(engine)
    events = []
    for n in range(30):
        summary = n % 3 == 0
        events.append(AuditEvent(
            at=T0 + n * 600, kind="decision", subject=f"u{n % 2}",
            request={"client_ip": "ip:0123456789abcdef0123" if n % 2 else "203.0.113.1"},
            decision="allow" if summary or n % 3 == 1 else "step_up", rule=f"r{n % 4}",
            outcome="allow_summary" if summary else ("allow" if n % 3 == 1 else "step_up"),
            detail={"count": 7} if summary else {}))
    log.append_many(events)
    tallies = stats.tallies(since=T0, until=T0 + 30 * 600)
    assert sum(t.entries for t in tallies) == 30
    assert sum(t.requests for t in tallies) == 10 * 7 + 20
    timeline = stats.timeline(since=T0, until=T0 + 30 * 600, bucket=3600)
    assert sum(count for _, _, count in timeline) == 90
    assert {start for start, _, _ in timeline} == {T0 // 3600 * 3600 + h * 3600
                                                  for h in range(6)} - {T0 // 3600 * 3600 - 3600}
    named, hidden = stats.pseudonymised(since=T0, until=T0 + 30 * 600)
    assert (named, hidden) == (30, 15)

    page = log.latest(limit=4, subject="u1", outcome="allow_summary")
    assert [e.seq for e in page] == [28, 22, 16, 10]
    older = log.latest(before_seq=10, limit=4, subject="u1", outcome="allow_summary")
    assert [e.seq for e in older] == [4]
    window = log.latest(limit=100, since=T0 + 600 * 10, until=T0 + 600 * 12)
    assert [e.seq for e in window] == [12, 11]
    assert log.latest(limit=5, since=T0 + 10**6) == []
    assert [e.seq for e in log.entries(since=T0 + 600 * 28)] == [29, 30]
    engine.dispose()


def test_policy_versions_and_dead_letters(url: str) -> None:
    engine = make_engine(url)
    versions, letters = PolicyVersions(engine), DeadLetters(engine)
    first = versions.record("rules: []\n", source="policy.yaml", now=T0)
    assert versions.record("rules: []\n", source="policy.yaml", now=T0 + 5) == first
    second = versions.record("rules: []\ndefault: allow\n", source="policy.yaml", now=T0 + 9)
    assert (first.version, second.version) == (1, 2)
    assert [v.version for v in versions.latest(5)] == [2, 1]
    assert "+default: allow" in policy_diff(first, second)
    assert versions.get(3) is None and policy_diff(None, first) == ""
    letters.add(DeadLetter("hooks.example", "lockout", '{"id":"x"}', 6, "HTTP 503"), now=T0)
    (stored,) = letters.recent()
    assert (stored.target, stored.attempts, letters.count()) == ("hooks.example", 6, 1)
    engine.dispose()
