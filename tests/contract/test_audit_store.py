"""The SQL audit ledger on SQLite and on a real PostgreSQL, both migrated with Alembic.

One chain under concurrent writers (threads and processes), filtered reads, pruning with a signed
checkpoint, tampering in the database found by `verify_store`, and no secret in any stored row.
"""

from __future__ import annotations

import io
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from stepguard.audit.commands import export_store, verify_export, verify_store
from stepguard.audit.ledger import (
    GENESIS_HASH,
    AuditEvent,
    ChainFault,
    pseudonymise_ip,
    public_key_pem,
    session_ref,
    verify_chain,
)
from stepguard.core.errors import AuditIntegrityError, ConfigError, StoreUnavailable
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.engine import make_engine
from stepguard.storage.migrate import upgrade
from tests.support.postgres import create_database, drop_database

T0 = 1_714_564_800.0
AUDIT_KEY = b"audit-pseudonymisation-key-0001"


def event(
    n: int,
    *,
    subject: str = "alice",
    kind: str = "decision",
    at: float | None = None,
    rule: str = "admin-roles",
    outcome: str = "step_up",
) -> AuditEvent:
    return AuditEvent(
        at=T0 + n if at is None else at,
        kind=kind,
        subject=subject,
        request={"method": "POST", "host": "app.example.com", "path": f"/admin/users/{n}/roles"},
        decision=outcome,
        rule=rule,
        reasons=("Changing someone's roles",),
        outcome=outcome,
        detail={"n": n, "amount": n * 1.5},
    )


@pytest.fixture(scope="module")
def audit_postgres_url(postgres_url: str) -> Iterator[str]:
    url = create_database(postgres_url, prefix="audit")
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture
def audit_postgres_empty(audit_postgres_url: str) -> str:
    engine = make_engine(audit_postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE audit_entries, audit_checkpoints"))
            connection.execute(
                text("UPDATE audit_head SET seq = 0, hash = :h"), {"h": GENESIS_HASH}
            )
    finally:
        engine.dispose()
    return audit_postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "audit_postgres_empty"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def log(url: str) -> Iterator[SqlAuditLog]:
    engine = make_engine(url)
    yield SqlAuditLog(engine, page_size=7)  # a small page so reads cross page boundaries
    engine.dispose()


def sql(url: str, statement: str, **params: object) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


# ------------------------------------------------------------------ appending and reading


def test_appends_form_one_chain_and_read_back_equal(log: SqlAuditLog) -> None:
    first = log.append(event(1))
    rest = log.append_many([event(n) for n in range(2, 31)])
    assert first.seq == 1 and first.prev_hash == GENESIS_HASH
    assert [entry.seq for entry in rest] == list(range(2, 31))
    stored = list(log.entries())
    assert stored == [first, *rest]
    assert verify_chain(stored).ok
    assert log.count() == 30
    state = log.state()
    assert (state.head.seq, state.head.hash, state.last_seq, state.count) == (
        30,
        rest[-1].hash,
        30,
        30,
    )
    assert log.append_many([]) == []


def test_reads_filter_and_page(log: SqlAuditLog) -> None:
    log.append_many(
        [
            event(
                n,
                subject="bob" if n % 3 == 0 else "alice",
                kind="admin" if n % 5 == 0 else "decision",
                rule="large-transfer" if n % 2 else "admin-roles",
                outcome="allow" if n % 4 == 0 else "step_up",
            )
            for n in range(1, 41)
        ]
    )
    seqs = lambda **kw: [e.seq for e in log.entries(**kw)]  # noqa: E731
    assert seqs() == list(range(1, 41))
    assert seqs(after_seq=35) == [36, 37, 38, 39, 40]
    assert seqs(after_seq=10, limit=9) == list(range(11, 20))
    assert seqs(until_seq=3) == [1, 2, 3]
    assert seqs(subject="bob") == list(range(3, 41, 3))
    assert seqs(kind="admin") == list(range(5, 41, 5))
    assert seqs(rule="admin-roles", outcome="allow") == list(range(4, 41, 4))
    assert seqs(subject="bob", kind="admin", limit=1) == [15]
    assert seqs(subject="nobody") == []
    newest = lambda **kw: [e.seq for e in log.latest(**kw)]  # noqa: E731
    assert newest(limit=3) == [40, 39, 38]
    assert newest(limit=2, subject="bob") == [39, 36]
    assert newest(limit=2, rule="admin-roles", outcome="allow") == [40, 36]
    assert newest(limit=0) == []
    assert newest(limit=5, subject="nobody") == []


def test_a_missing_head_row_is_created(url: str, log: SqlAuditLog) -> None:
    sql(url, "DELETE FROM audit_head")
    assert log.append(event(1)).seq == 1
    assert log.append(event(2)).seq == 2


@pytest.mark.parametrize("threads", [8])
def test_concurrent_writers_extend_one_chain(log: SqlAuditLog, threads: int) -> None:
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def write(worker: int) -> None:
        barrier.wait()
        try:
            for n in range(50):
                log.append(event(worker * 1000 + n, at=T0))
        except BaseException as error:  # noqa: BLE001
            failures.append(error)

    workers = [threading.Thread(target=write, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    entries = list(log.entries())
    assert [entry.seq for entry in entries] == list(range(1, 401))
    assert verify_chain(entries, head=log.state().head).ok
    assert len({entry.detail["n"] for entry in entries}) == 400


def _append_in_process(url: str, worker: int, count: int) -> int:
    engine = make_engine(url)
    try:
        audit = SqlAuditLog(engine)
        for n in range(count):
            audit.append_many(
                [event(worker * 1000 + n, at=T0), event(worker * 1000 + 500 + n, at=T0)]
            )
        return count * 2
    finally:
        engine.dispose()


def test_concurrent_processes_extend_one_chain(url: str, log: SqlAuditLog) -> None:
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=4, mp_context=context) as pool:
        written = sum(pool.map(_append_in_process, [url] * 4, range(4), [25] * 4))
    assert written == 200
    entries = list(log.entries())
    assert [entry.seq for entry in entries] == list(range(1, 201))
    assert verify_chain(entries, head=log.state().head).ok


# ------------------------------------------------------------------ pruning and checkpoints


def test_prune_leaves_a_signed_checkpoint_the_ledger_verifies_from(
    url: str, log: SqlAuditLog
) -> None:
    key = Ed25519PrivateKey.generate()
    entries = log.append_many([event(n) for n in range(1, 31)])
    checkpoint = log.prune(before_seq=11, signing_key=key)
    assert (checkpoint.seq, checkpoint.hash, checkpoint.at, checkpoint.count_pruned) == (
        10,
        entries[9].hash,
        entries[9].at,
        10,
    )
    assert log.latest_checkpoint() == checkpoint
    assert [entry.seq for entry in log.entries()] == list(range(11, 31))
    assert log.count() == 20
    public = public_key_pem(key)
    assert verify_store(url, public_key_pem=public).ok
    with pytest.raises(ConfigError):
        verify_store(url, public_key_pem=None)
    log.append(event(31))
    second = log.prune(before_seq=26, signing_key=key)
    assert (second.seq, second.count_pruned) == (25, 15)
    report = verify_store(url, public_key_pem=public)
    assert report.ok and report.count == 6


def test_prune_refuses_nonsense_and_a_tampered_ledger(url: str, log: SqlAuditLog) -> None:
    key = Ed25519PrivateKey.generate()
    log.append_many([event(n) for n in range(1, 11)])
    for before in (0, 1, 12):
        with pytest.raises(ValueError):
            log.prune(before_seq=before, signing_key=key)
    sql(url, "UPDATE audit_entries SET subject = 'mallory' WHERE seq = 4")
    with pytest.raises(AuditIntegrityError, match="edited at entry 4"):
        log.prune(before_seq=8, signing_key=key)
    assert log.count() == 10 and log.latest_checkpoint() is None


def test_prune_refuses_a_checkpoint_signed_by_another_key(log: SqlAuditLog) -> None:
    log.append_many([event(n) for n in range(1, 11)])
    log.prune(before_seq=4, signing_key=Ed25519PrivateKey.generate())
    with pytest.raises(AuditIntegrityError, match="not signed by this key"):
        log.prune(before_seq=8, signing_key=Ed25519PrivateKey.generate())


def test_a_forged_checkpoint_is_reported(url: str, log: SqlAuditLog) -> None:
    key = Ed25519PrivateKey.generate()
    log.append_many([event(n) for n in range(1, 21)])
    log.prune(before_seq=6, signing_key=key)
    sql(url, "DELETE FROM audit_entries WHERE seq <= 8")  # hide more, then claim a later cut
    sql(
        url,
        "UPDATE audit_checkpoints SET seq = 8, "
        "hash = (SELECT prev_hash FROM audit_entries WHERE seq = 9)",
    )
    report = verify_store(url, public_key_pem=public_key_pem(key))
    assert (report.ok, report.problem, report.first_bad_seq) == (
        False,
        ChainFault.BAD_CHECKPOINT,
        8,
    )


# ------------------------------------------------------------------ tampering in the database


def tampered(url: str, log: SqlAuditLog, *statements: str) -> tuple[ChainFault | None, int | None]:
    log.append_many([event(n) for n in range(1, 21)])
    assert verify_store(url, public_key_pem=None).ok
    for statement in statements:
        sql(url, statement)
    report = verify_store(url, public_key_pem=None)
    assert not report.ok
    return report.problem, report.first_bad_seq


def test_verify_store_finds_an_edited_row(url: str, log: SqlAuditLog) -> None:
    assert tampered(url, log, "UPDATE audit_entries SET outcome = 'allow' WHERE seq = 7") == (
        ChainFault.EDITED,
        7,
    )


def test_verify_store_finds_edited_json_fields(url: str, log: SqlAuditLog) -> None:
    statement = "UPDATE audit_entries SET fields = REPLACE(fields, 'roles', 'rolez') WHERE seq = 12"
    assert tampered(url, log, statement) == (ChainFault.EDITED, 12)


def test_verify_store_finds_a_deleted_row(url: str, log: SqlAuditLog) -> None:
    assert tampered(url, log, "DELETE FROM audit_entries WHERE seq = 9") == (ChainFault.DELETED, 9)


def test_verify_store_finds_a_cut_tail(url: str, log: SqlAuditLog) -> None:
    assert tampered(url, log, "DELETE FROM audit_entries WHERE seq > 17") == (
        ChainFault.DELETED,
        18,
    )


def test_verify_store_finds_swapped_rows(url: str, log: SqlAuditLog) -> None:
    statements = (
        "UPDATE audit_entries SET seq = -1 WHERE seq = 5",
        "UPDATE audit_entries SET seq = 5 WHERE seq = 6",
        "UPDATE audit_entries SET seq = 6 WHERE seq = -1",
    )
    assert tampered(url, log, *statements) == (ChainFault.REORDERED_SEQ, 5)


def test_verify_store_finds_a_row_inserted_beyond_the_head(url: str, log: SqlAuditLog) -> None:
    statement = (
        "INSERT INTO audit_entries (seq, at, kind, subject, session, decision, rule, factor, "
        "outcome, fields, prev_hash, hash) SELECT 21, at, kind, 'mallory', session, decision, "
        "rule, factor, outcome, fields, hash, hash FROM audit_entries WHERE seq = 20"
    )
    assert tampered(url, log, statement) == (ChainFault.INSERTED, 21)


def test_a_head_behind_the_entries_stops_appends_loudly(url: str, log: SqlAuditLog) -> None:
    log.append_many([event(n) for n in range(1, 4)])
    sql(url, "UPDATE audit_head SET seq = 1")
    with pytest.raises(AuditIntegrityError):
        log.append(event(4))


# ------------------------------------------------------------------ export


def test_export_store_round_trips_and_verifies(url: str, log: SqlAuditLog) -> None:
    key = Ed25519PrivateKey.generate()
    log.append_many([event(n) for n in range(1, 26)])
    out = io.StringIO()
    assert export_store(url, out) == 25
    assert verify_export(io.StringIO(out.getvalue()), public_key_pem=None).ok
    log.prune(before_seq=11, signing_key=key)
    out = io.StringIO()
    assert export_store(url, out) == 15
    assert out.getvalue().startswith('{"checkpoint":')
    assert verify_export(io.StringIO(out.getvalue()), public_key_pem=public_key_pem(key)).ok
    out = io.StringIO()
    assert export_store(url, out, since_seq=20) == 5
    assert out.getvalue().startswith('{"after":')
    assert verify_export(io.StringIO(out.getvalue()), public_key_pem=None).ok


# ------------------------------------------------------------------ secrets and outages


def test_no_secret_reaches_any_stored_row(url: str, log: SqlAuditLog, tmp_path: Path) -> None:
    secret = "S3cr3t-4711-Zebra"
    token = "session-token-Quokka-0815"
    ip = "198.51.100.77"
    leaky = AuditEvent(
        at=T0,
        kind="verification",
        subject="alice",
        session=session_ref(token, key=AUDIT_KEY),
        request={
            "method": "POST",
            "path": f"/step-up/c1?code={secret}&token={secret}",
            "client_ip": pseudonymise_ip(ip, key=AUDIT_KEY),
            "cookie": secret,
            "authorization": f"Bearer {secret}",
        },
        reasons=(f"password={secret}", "Wrong code"),
        factor="totp",
        outcome="failed",
        detail={
            "code": secret,
            "otp": secret,
            "password": secret,
            "totp_secret": secret,
            "recoveryCode": secret,
            "headers": {"Authorization": f"Bearer {secret}", "Cookie": f"sid={secret}"},
            "credential": secret,
            "assertion": secret,
            "note": f"Basic {secret}",
            "attempts": 3,
        },
    )
    log.append(leaky)
    log.prune(before_seq=2, signing_key=Ed25519PrivateKey.generate())
    log.append(leaky)
    stored = []
    for table in ("audit_entries", "audit_head", "audit_checkpoints"):
        stored += [repr(row) for row in sql(url, f"SELECT * FROM {table}")]
    dump = "\n".join(stored)
    assert "attempts" in dump and "Wrong code" in dump  # the rows were really read
    for needle in (secret, token, ip):
        assert needle not in dump
    out = io.StringIO()
    export_store(url, out)
    for needle in (secret, token, ip):
        assert needle not in out.getvalue()
    if url.startswith("sqlite"):  # the raw database file (and its WAL) too
        path = Path(url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        for needle in (secret, token, ip):
            assert needle.encode() not in raw


def test_an_unreachable_store_raises_store_unavailable(tmp_path: Path) -> None:
    for url in (
        f"sqlite:///{tmp_path / 'missing' / 'audit.db'}",
        "postgresql+psycopg://postgres@127.0.0.1:1/none",
    ):
        engine = make_engine(url, connect_timeout=1)
        audit = SqlAuditLog(engine)
        with pytest.raises(StoreUnavailable):
            audit.append(event(1))
        with pytest.raises(StoreUnavailable):
            list(audit.entries())
        with pytest.raises(StoreUnavailable):
            audit.count()
        engine.dispose()
