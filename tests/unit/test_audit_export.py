"""JSON Lines export: stable lines, exact round trip, headers, and verifying an exported file."""

from __future__ import annotations

import io
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from stepguard.audit.commands import verify_export
from stepguard.audit.export import export_jsonl, format_time, parse_time, read_export, read_jsonl
from stepguard.audit.ledger import (
    AuditEvent,
    ChainFault,
    ChainHead,
    Checkpoint,
    normalise_time,
    public_key_pem,
    seal_chain,
    sign_checkpoint,
    verify_chain,
)
from stepguard.core.errors import AuditIntegrityError, ConfigError

T0 = 1_714_564_800.25


def events(count: int, *, start: int = 1) -> list[AuditEvent]:
    return [
        AuditEvent(
            at=T0 + n * 0.000137,
            kind="verification",
            subject="alice",
            request={"method": "POST", "path": "/step-up/c", "client_ip": "ip:abc"},
            factor="totp",
            outcome="passed",
            reasons=("Änderung der Rollen",),
            detail={"zeta": 1, "alpha": {"b": 2.5, "a": [1, None, True]}, "n": n},
        )
        for n in range(start, start + count)
    ]


def exported(entries: object, **kwargs: object) -> str:
    out = io.StringIO()
    export_jsonl(entries, out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def test_export_then_read_round_trips_and_verifies() -> None:
    entries = seal_chain(events(50))
    text = exported(entries)
    assert len(text.splitlines()) == 50
    back = list(read_jsonl(io.StringIO(text)))
    assert back == entries
    assert verify_chain(back).ok


def test_lines_have_a_stable_key_order_and_iso_times() -> None:
    entry = seal_chain(events(1))[0]
    line = exported([entry]).strip()
    record = json.loads(line)
    assert list(record) == [
        "seq",
        "at",
        "kind",
        "subject",
        "session",
        "request",
        "decision",
        "rule",
        "reasons",
        "factor",
        "outcome",
        "detail",
        "prev_hash",
        "hash",
    ]
    assert list(record["detail"]) == ["alpha", "n", "zeta"]
    assert list(record["detail"]["alpha"]) == ["a", "b"]
    assert record["at"] == "2024-05-01T12:00:00.250137Z"
    assert exported([entry]) == exported([entry])


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_times_round_trip_exactly(at: float) -> None:
    kept = normalise_time(at)
    assert parse_time(format_time(kept)) == kept


def test_parse_time_wants_utc() -> None:
    with pytest.raises(ValueError):
        parse_time("2024-05-01T12:00:00.000000+02:00")


def test_a_tampered_export_fails_verification() -> None:
    lines = exported(seal_chain(events(10))).splitlines()
    record = json.loads(lines[4])
    record["subject"] = "mallory"
    lines[4] = json.dumps(record)
    report = verify_chain(read_jsonl(io.StringIO("\n".join(lines))))
    assert (report.problem, report.first_bad_seq) == (ChainFault.EDITED, 5)
    del lines[4]
    report = verify_export(io.StringIO("\n".join(lines[:3] + lines[5:])), public_key_pem=None)
    assert (report.problem, report.first_bad_seq) == (ChainFault.DELETED, 4)


def test_a_malformed_line_is_reported_with_its_number() -> None:
    lines = exported(seal_chain(events(5))).splitlines()
    lines[2] = "{not json"
    with pytest.raises(AuditIntegrityError, match="line 3"):
        list(read_jsonl(io.StringIO("\n".join(lines))))
    lines[2] = json.dumps({"seq": 3, "at": "2024-05-01T12:00:00.000000Z"})
    report = verify_export(io.StringIO("\n".join(lines)), public_key_pem=None)
    assert not report.ok and report.count == 2 and "line 3" in report.detail
    lines[2] = '{"seq": 3, "detail": NaN}'
    with pytest.raises(AuditIntegrityError, match="line 3"):
        list(read_jsonl(io.StringIO("\n".join(lines))))


def test_a_checkpoint_header_lets_a_pruned_export_verify() -> None:
    key = Ed25519PrivateKey.generate()
    entries = seal_chain(events(20))
    cut = entries[9]
    checkpoint = sign_checkpoint(seq=10, hash=cut.hash, at=cut.at, count_pruned=10, signing_key=key)
    text = exported(entries[10:], start=checkpoint)
    start, back = read_export(io.StringIO(text))
    assert start == checkpoint and isinstance(start, Checkpoint)
    assert verify_chain(back, anchor=start).ok
    assert verify_export(io.StringIO(text), public_key_pem=public_key_pem(key)).ok
    other = public_key_pem(Ed25519PrivateKey.generate())
    report = verify_export(io.StringIO(text), public_key_pem=other)
    assert (report.problem, report.first_bad_seq) == (ChainFault.BAD_CHECKPOINT, 10)
    with pytest.raises(ConfigError):
        verify_export(io.StringIO(text), public_key_pem=None)
    assert len(list(read_jsonl(io.StringIO(text)))) == 10


def test_a_partial_export_continues_from_its_after_header() -> None:
    entries = seal_chain(events(20))
    start = ChainHead(entries[4].seq, entries[4].hash, entries[4].at)
    text = exported(entries[5:], start=start)
    assert json.loads(text.splitlines()[0]) == {
        "after": {"seq": 5, "hash": entries[4].hash, "at": format_time(entries[4].at)}
    }
    assert verify_export(io.StringIO(text), public_key_pem=None).ok
    assert not verify_export(io.StringIO(text.split("\n", 2)[2]), public_key_pem=None).ok


def test_a_header_anywhere_else_is_refused() -> None:
    entries = seal_chain(events(3))
    text = exported(entries[:1]) + exported([], start=ChainHead(1, entries[0].hash))
    with pytest.raises(AuditIntegrityError, match="line 2"):
        list(read_jsonl(io.StringIO(text)))


def test_an_empty_export() -> None:
    assert exported([]) == ""
    assert read_export(io.StringIO(""))[0] is None
    assert verify_export(io.StringIO("\n\n"), public_key_pem=None).ok
