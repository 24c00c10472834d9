"""Audit export as JSON Lines (one entry per line, stable key order) and reading it back.

Times are written as ISO-8601 UTC with microseconds (`2024-05-01T12:00:00.250000Z`); entries keep
their time to the microsecond, so a read-back entry hashes exactly as it was sealed and an exported
file verifies on its own. A pruned or partial export starts with one header line naming where the
chain picks up: `{"checkpoint": {...}}` (signed) or `{"after": {...}}` (an unsigned position).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from stepguard.audit.ledger import (
    AuditEntry,
    ChainHead,
    Checkpoint,
    entry_from_record,
    entry_record,
    normalise_time,
)
from stepguard.core.errors import AuditIntegrityError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Start = Checkpoint | ChainHead


def format_time(at: float) -> str:
    """Epoch seconds as ISO-8601 UTC with microseconds and a `Z`."""
    moment = _EPOCH + round(normalise_time(at) * 1_000_000) * _MICROSECOND
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> float:
    """The inverse of `format_time`: exact for any time kept to the microsecond."""
    if not text.endswith("Z"):
        raise ValueError("an audit time must be UTC (ending in Z)")
    moment = datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    return ((moment - _EPOCH) // _MICROSECOND) / 1_000_000


def export_jsonl(entries: Iterable[AuditEntry], out: TextIO, *, start: Start | None = None) -> int:
    """Write each entry as one JSON line (after a header line if `start` is given); return count."""
    if start is not None:
        out.write(_dumps(_start_record(start)) + "\n")
    count = 0
    for entry in entries:
        out.write(_dumps(_line_record(entry)) + "\n")
        count += 1
    return count


def read_export(stream: Iterable[str]) -> tuple[Start | None, Iterator[AuditEntry]]:
    """The starting point named by the header line (if any) and the entries that follow."""
    lines = _numbered_records(stream)
    first = next(lines, None)
    if first is None:
        return None, iter(())
    number, record = first
    if _is_header(record):
        return _parse_start(record, number), _entries(lines)
    return None, _entries(_chain([(number, record)], lines))


def read_jsonl(stream: Iterable[str]) -> Iterator[AuditEntry]:
    """The entries of an export (a header line, if present, is skipped)."""
    return read_export(stream)[1]


def _line_record(entry: AuditEntry) -> dict[str, Any]:
    record = entry_record(entry)
    record["at"] = format_time(entry.at)
    return {key: _sorted(value) for key, value in record.items()}


def _start_record(start: Start) -> dict[str, Any]:
    if isinstance(start, Checkpoint):
        return {
            "checkpoint": {
                "seq": start.seq,
                "hash": start.hash,
                "at": format_time(start.at),
                "count_pruned": start.count_pruned,
                "signature": start.signature,
            }
        }
    after: dict[str, Any] = {"seq": start.seq, "hash": start.hash}
    if start.at is not None:
        after["at"] = format_time(start.at)
    return {"after": after}


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _numbered_records(stream: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, _loads(line, number)


def _loads(line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line, parse_constant=_refuse_constant)
    except ValueError:
        raise AuditIntegrityError(f"line {number}: not a JSON object") from None
    if not isinstance(record, dict):
        raise AuditIntegrityError(f"line {number}: not a JSON object")
    return record


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _chain(
    head: list[tuple[int, dict[str, Any]]], rest: Iterator[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from head
    yield from rest


def _is_header(record: Mapping[str, Any]) -> bool:
    return set(record) in ({"checkpoint"}, {"after"})


def _entries(lines: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[AuditEntry]:
    for number, record in lines:
        if _is_header(record):
            raise AuditIntegrityError(f"line {number}: a header line must come first")
        yield _parse_entry(record, number)


def _parse_entry(record: dict[str, Any], number: int) -> AuditEntry:
    try:
        record = {**record, "at": parse_time(record["at"])}
        return entry_from_record(record)
    except (KeyError, TypeError, ValueError, AuditIntegrityError) as error:
        raise AuditIntegrityError(f"line {number}: {error}") from None


def _parse_start(record: Mapping[str, Any], number: int) -> Start:
    try:
        if "checkpoint" in record:
            body = record["checkpoint"]
            return Checkpoint(
                seq=int(body["seq"]),
                hash=str(body["hash"]),
                at=parse_time(body["at"]),
                count_pruned=int(body["count_pruned"]),
                signature=str(body["signature"]),
            )
        body = record["after"]
        at = parse_time(body["at"]) if "at" in body else None
        return ChainHead(seq=int(body["seq"]), hash=str(body["hash"]), at=at)
    except (KeyError, TypeError, ValueError) as error:
        raise AuditIntegrityError(f"line {number}: malformed header ({error})") from None
