"""Audit entries that could not be written at shutdown: saved to disk, written at the next start.

`Runtime.close()` waits `audit.shutdown_timeout` for the audit queue to drain. If the store is
down for that long, the entries still queued are saved here as JSON Lines (one event per line,
the sealed content without seq or hashes) instead of being lost; the next runtime built from the
same configuration claims each file (an atomic rename, so one worker of a host takes it) and
queues its events again. They join the chain then, in their original order with their original
times. If a process dies between writing a replayed file and removing it, its entries can appear
twice — never zero times.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

from stepguard.audit.ledger import AuditEvent, content_fields
from stepguard.audit.writer import AuditWriter

log = logging.getLogger("stepguard.audit")


def spill(events: Sequence[AuditEvent], directory: Path) -> Path | None:
    """Write `events` to a new file in `directory` (fsynced); None when there is nothing."""
    if not events:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"unwritten-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
    partial = path.with_suffix(".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(content_fields(event), sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    partial.rename(path)
    log.error("%d audit entries could not be written (store unavailable); saved to %s",
              len(events), path)
    return path


def replay(directory: Path, writer: AuditWriter) -> list[Path]:
    """Queue every spilled event on `writer`; return the files claimed for that.

    A background thread removes the claimed files once their events are written (the store may
    still be down). If the writer closes first, `Runtime.close()` spills what is still unwritten
    (these events included) to a new file and then calls `forget(claimed)`.
    """
    claimed_files = []
    for path in sorted(directory.glob("unwritten-*.jsonl")) if directory.is_dir() else []:
        claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            continue  # another worker took it
        for event in _read(claimed):
            writer.submit(event)
        claimed_files.append(claimed)
    if claimed_files:
        threading.Thread(target=_remove_when_written, args=(writer, claimed_files),
                         name="stepguard-audit-replay", daemon=True).start()
    return claimed_files


def forget(paths: Sequence[Path]) -> None:
    """Remove claimed spill files (their events are written, or spilled again)."""
    for path in paths:
        path.unlink(missing_ok=True)


def _read(path: Path) -> list[AuditEvent]:
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            fields = json.loads(line)
            fields["reasons"] = tuple(fields.get("reasons", ()))
            events.append(AuditEvent(**fields))
    return events


def _remove_when_written(writer: AuditWriter, paths: Sequence[Path]) -> None:
    from stepguard.core.errors import StoreUnavailable

    try:
        writer.flush()
    except StoreUnavailable:
        return  # the writer closed first; Runtime.close() spilled them again
    forget(paths)
