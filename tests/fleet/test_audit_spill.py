"""Audit entries that cannot be written at shutdown are spilled to disk and written at the next
start, exactly once, in order (service/audit_spill.py); no server needed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from stepguard.audit.ledger import AuditEntry, AuditEvent, content_fields
from stepguard.audit.writer import AuditWriter
from stepguard.core.errors import StoreUnavailable
from stepguard.service import audit_spill
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.engine import make_engine
from stepguard.storage.migrate import upgrade


class DownSink:
    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        raise StoreUnavailable("the store is unavailable")


def events(count: int) -> list[AuditEvent]:
    return [AuditEvent(at=1_900_000_000.0 + n, kind="decision", subject=f"user-{n}",
                       request={"method": "GET", "host": "app.test", "path": f"/p/{n}"},
                       decision="allow", rule="r", reasons=(f"reason {n}",),
                       detail={"risk_score": n}) for n in range(count)]


def test_unwritten_entries_are_spilled_then_written_once_at_the_next_start(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    down = AuditWriter(DownSink(), retry_initial=0.01, retry_max=0.02, on_error=lambda e, d: None)
    for event in events(7):
        down.submit(event)
    with pytest.raises(StoreUnavailable):
        down.close(timeout=0.2)
    path = audit_spill.spill(down.unwritten(), spill_dir)
    assert path is not None and len(path.read_text().splitlines()) == 7
    assert "secret" not in path.read_text()

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    engine = make_engine(url)
    log = SqlAuditLog(engine)
    writer = AuditWriter(log)
    claimed = audit_spill.replay(spill_dir, writer)
    assert len(claimed) == 1 and not list(spill_dir.glob("unwritten-*.jsonl"))
    assert audit_spill.replay(spill_dir, AuditWriter(DownSink())) == []  # claimed: only once
    writer.flush(timeout=5)
    deadline = time.monotonic() + 5
    while claimed[0].exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not claimed[0].exists()
    written = list(log.entries())
    assert [content_fields(e) for e in written] == [content_fields(e) for e in events(7)]
    writer.close()
    engine.dispose()


def test_nothing_to_spill_writes_no_file(tmp_path: Path) -> None:
    assert audit_spill.spill([], tmp_path / "spill") is None
    assert not (tmp_path / "spill").exists()
