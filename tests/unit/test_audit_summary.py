"""Audit without taxing allows: plain allows summarised per subject, session, rule and interval;
unchecked per-request events checked in the writer's thread; a closed set of kinds; nothing lost
on a clean stop; the chain still verifies."""

from __future__ import annotations

import pytest

from stepguard.audit.ledger import AuditEvent, AuditKind, verify_chain
from stepguard.audit.memory import MemoryAuditLog
from stepguard.audit.summary import PATH_SAMPLE, AllowSummary
from stepguard.audit.writer import AuditWriter

T0 = 1_900_000_020.0


def note(summary: AllowSummary, at: float, *, subject: str = "u1", path: str = "/a",
         rule: str = "default") -> None:
    summary.note(subject=subject, session="", rule=rule, at=at, host="app.test", method="GET",
                 path=path)


def test_allows_are_counted_per_subject_rule_and_interval() -> None:
    summary = AllowSummary(60)
    for n in range(5):
        note(summary, T0 + n, path=f"/p/{n % 2}")
    note(summary, T0 + 1, subject="u2")
    note(summary, T0 + 61)  # the next interval
    assert summary.due(T0 + 30) == []  # the first interval is still open
    closed = summary.due(T0 + 61)
    assert [(e.subject, e.detail["count"]) for e in closed] == [("u2", 1), ("u1", 5)]
    mine = closed[1]
    assert mine.kind == "decision" and mine.decision == "allow"
    assert mine.outcome == "allow_summary" and mine.at == T0 + 4
    assert mine.detail["first"] == T0 and mine.detail["last"] == T0 + 4
    assert mine.detail["paths"] == ["/p/0", "/p/1"]
    assert [e.detail["count"] for e in summary.drain()] == [1]
    assert summary.drain() == []


def test_the_path_sample_is_bounded() -> None:
    summary = AllowSummary(60)
    for n in range(100):
        note(summary, T0, path=f"/p/{n}")
    [event] = summary.drain()
    assert event.detail["count"] == 100 and len(event.detail["paths"]) == PATH_SAMPLE


def test_a_clean_stop_writes_the_open_intervals_and_the_chain_verifies() -> None:
    log = MemoryAuditLog()
    summary = AllowSummary(60)
    writer = AuditWriter(log, summary=summary, clock=lambda: T0)
    writer.submit(AuditEvent(at=T0, kind="session", outcome="signed_in"))
    for n in range(1000):
        note(summary, T0 + n / 1000)
    writer.close(timeout=5)
    entries = list(log.entries())
    assert [e.outcome for e in entries] == ["signed_in", "allow_summary"]
    assert entries[1].detail["count"] == 1000
    assert verify_chain(entries).ok


def test_closed_intervals_are_written_without_a_flush() -> None:
    now = [T0]
    log = MemoryAuditLog()
    summary = AllowSummary(0.05)
    writer = AuditWriter(log, summary=summary, clock=lambda: now[0])
    note(summary, T0)
    now[0] = T0 + 0.2
    import time

    deadline = time.monotonic() + 5
    while log.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.detail["count"] for e in log.entries()] == [1]
    writer.close(timeout=5)


def test_unchecked_events_are_checked_and_redacted_before_sealing() -> None:
    log = MemoryAuditLog()
    writer = AuditWriter(log)
    event = AuditEvent.unchecked(
        at=T0 + 0.1234567891, kind=AuditKind.DECISION, subject="u1",
        request={"method": "GET", "host": "app.test", "path": "/x?token=abc",
                 "client_ip": "198.51.100.7"},
        decision="allow", rule="r", reasons=("password=hunter2",), outcome="allow",
        detail={"risk_score": 0, "session_token": "abc", "signals": ("new_device",)})
    writer.submit(event, checked=False)
    writer.submit(AuditEvent.unchecked(at=T0, kind=AuditKind.DECISION, subject="x" * 300),
                  checked=False)
    writer.close(timeout=5)
    sealed, refused = list(log.entries())
    assert sealed.request["path"] == "/x" and sealed.reasons == ()
    assert "session_token" not in sealed.detail and sealed.detail["signals"] == ["new_device"]
    assert sealed.at == round(T0 + 0.1234567891, 6)
    assert refused.outcome == "unrecordable" and "x" * 300 not in str(refused)
    assert verify_chain([sealed, refused]).ok


def test_unwritten_unchecked_events_are_checked_before_they_are_spilled() -> None:
    class Down:
        def append_many(self, events: object) -> list[object]:
            raise OSError("down")

    writer = AuditWriter(Down(), retry_initial=0.01, retry_max=0.01,  # type: ignore[arg-type]
                         on_error=lambda e, d: None)
    writer.submit(AuditEvent.unchecked(at=T0, kind=AuditKind.DECISION,
                                       request={"path": "/p?code=123456"}), checked=False)
    with pytest.raises(Exception):
        writer.close(timeout=0.1)
    [spilled] = writer.unwritten()
    assert spilled.request["path"] == "/p"


def test_the_set_of_kinds_is_closed() -> None:
    assert {k.value for k in AuditKind} == {"decision", "challenge", "verification",
                                            "enrolment", "session", "admin", "checkpoint"}
    with pytest.raises(ValueError):
        AuditEvent(at=T0, kind="custom")
    assert AuditEvent(at=T0, kind=AuditKind.ADMIN).kind == "admin"


def test_memory_log_latest_is_newest_first_and_bounded() -> None:
    log = MemoryAuditLog()
    log.append_many([AuditEvent(at=1.0 + n, kind="decision", subject="bob" if n % 2 else "al",
                                rule="r", outcome="allow") for n in range(6)])
    assert [e.seq for e in log.latest(limit=2)] == [6, 5]
    assert [e.seq for e in log.latest(limit=9, subject="bob")] == [6, 4, 2]
    assert log.latest(limit=3, outcome="deny") == []


def test_allows_counted_at_once_are_the_same_line_as_counted_one_by_one() -> None:
    """The postgres door hands over a turn's allows of one answer at once."""
    who = ("u1", "", "default", "", 0)
    one_by_one, at_once = AllowSummary(60), AllowSummary(60)
    for at in (T0, T0, T0 + 2):
        one_by_one.count(who, at=at, host="app", method="", path="")
    at_once.count(who, at=T0, host="app", method="", path="", times=2)
    at_once.count(who, at=T0 + 2, host="app", method="", path="", times=1)
    for n in range(PATH_SAMPLE + 2):  # past the bounded sample: counted as unlisted
        for summary in (one_by_one, at_once):
            summary.count(who, at=T0 + 3, host="app", method="GET", path=f"/p/{n}")
    for _ in range(3):
        one_by_one.count(who, at=T0 + 4, host="app", method="GET", path="/late")
    at_once.count(who, at=T0 + 4, host="app", method="GET", path="/late", times=3)
    [mine], [theirs] = at_once.drain(), one_by_one.drain()
    assert mine.detail == theirs.detail and mine.detail["count"] == PATH_SAMPLE + 8
