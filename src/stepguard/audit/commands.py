"""What `stepguard audit verify|export|keygen` run: the ledger API, called with a store URL."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stepguard.audit.export import export_jsonl, read_export
from stepguard.audit.ledger import (
    DEFAULT_TIME_TOLERANCE,
    AuditEntry,
    ChainFault,
    ChainHead,
    Checkpoint,
    VerifyReport,
    load_public_key,
    verify_chain,
    verify_checkpoint,
)
from stepguard.audit.replay import ReplayReport, replay
from stepguard.core.errors import AuditIntegrityError, ConfigError, Problem, VerificationFailed
from stepguard.storage.audit_store import LedgerState, SqlAuditLog
from stepguard.storage.engine import make_engine


def verify_store(
    url: str,
    *,
    public_key_pem: bytes | None,
    time_tolerance: float = DEFAULT_TIME_TOLERANCE,
) -> VerifyReport:
    """Verify the whole ledger in the store at `url` (a pruned one needs the public key)."""
    engine = make_engine(url)
    try:
        public_key = None if public_key_pem is None else load_public_key(public_key_pem)
        return verify_log(SqlAuditLog(engine), public_key=public_key, time_tolerance=time_tolerance)
    finally:
        engine.dispose()


def verify_log(
    log: SqlAuditLog,
    *,
    public_key: Ed25519PublicKey | None,
    time_tolerance: float = DEFAULT_TIME_TOLERANCE,
) -> VerifyReport:
    """Verify a ledger: its checkpoint's signature, every entry, and the recorded chain head."""
    checkpoint, state = _consistent_start(log)
    if checkpoint is not None:
        bad = _checkpoint_problem(checkpoint, public_key)
        if bad is not None:
            return bad
    entries = log.entries(until_seq=state.head.seq)
    report = verify_chain(
        entries, anchor=checkpoint, head=state.head, time_tolerance=time_tolerance
    )
    if report.ok and state.last_seq > state.head.seq:
        first = state.head.seq + 1
        detail = f"entries {first}–{state.last_seq} lie beyond the chain head (entry {first - 1})"
        return VerifyReport(False, report.count, first, ChainFault.INSERTED, detail)
    return report


def export_store(url: str, out: TextIO, *, since_seq: int = 0) -> int:
    """Write the entries after `since_seq` as JSON Lines; return how many were written.

    The file starts with a header naming where it picks up the chain: the signed checkpoint of a
    pruned ledger, or (for `since_seq` > 0) the entry it continues from.
    """
    engine = make_engine(url)
    try:
        log = SqlAuditLog(engine)
        checkpoint, state = _consistent_start(log)
        start, after = _export_start(log, checkpoint, since_seq)
        return export_jsonl(
            log.entries(after_seq=after, until_seq=state.head.seq), out, start=start
        )
    finally:
        engine.dispose()


def verify_export(
    stream: Iterable[str],
    *,
    public_key_pem: bytes | None,
    time_tolerance: float = DEFAULT_TIME_TOLERANCE,
) -> VerifyReport:
    """Verify an exported file on its own (a signed checkpoint header needs the public key)."""
    start, entries = read_export(stream)
    if isinstance(start, Checkpoint):
        public_key = None if public_key_pem is None else load_public_key(public_key_pem)
        bad = _checkpoint_problem(start, public_key)
        if bad is not None:
            return bad
    counted = _Counting(entries)
    try:
        return verify_chain(counted, anchor=start, time_tolerance=time_tolerance)
    except AuditIntegrityError as error:
        return VerifyReport(False, counted.count, None, ChainFault.EDITED, str(error))


def generate_signing_key_pem() -> bytes:
    """A new Ed25519 checkpoint-signing key as unencrypted PKCS#8 PEM (store it as a secret)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _consistent_start(log: SqlAuditLog) -> tuple[Checkpoint | None, LedgerState]:
    """The latest checkpoint and the ledger state, re-read if a prune ran in between."""
    for _ in range(3):
        checkpoint = log.latest_checkpoint()
        state = log.state()
        if state.checkpoint_seq == (checkpoint.seq if checkpoint else 0):
            return checkpoint, state
    return checkpoint, state


def _checkpoint_problem(
    checkpoint: Checkpoint, public_key: Ed25519PublicKey | None
) -> VerifyReport | None:
    if public_key is None:
        message = "the audit ledger was pruned: its checkpoint needs the public key to verify"
        raise ConfigError([Problem(file="", path="audit.public_key", message=message)])
    try:
        verify_checkpoint(checkpoint, public_key=public_key)
    except VerificationFailed:
        detail = f"the checkpoint at entry {checkpoint.seq} is not validly signed"
        return VerifyReport(False, 0, checkpoint.seq, ChainFault.BAD_CHECKPOINT, detail)
    return None


def _export_start(
    log: SqlAuditLog, checkpoint: Checkpoint | None, since_seq: int
) -> tuple[Checkpoint | ChainHead | None, int]:
    if checkpoint is not None and since_seq <= checkpoint.seq:
        return checkpoint, checkpoint.seq
    if since_seq <= 0:
        return None, 0
    entry = next(log.entries(after_seq=since_seq - 1, limit=1), None)
    if entry is None or entry.seq != since_seq:
        raise ValueError(f"there is no audit entry {since_seq} to export after")
    return ChainHead(entry.seq, entry.hash, entry.at), since_seq


class _Counting:
    """Counts the entries read, so a malformed line can be reported after the good ones."""

    def __init__(self, entries: Iterator[AuditEntry]) -> None:
        self._entries = entries
        self.count = 0

    def __iter__(self) -> Iterator[AuditEntry]:
        for entry in self._entries:
            yield entry
            self.count += 1


def replay_store(url: str, candidate: Path, *, since: float, until: float, examples: int = 3,
                 jobs: int = 1) -> ReplayReport:
    """Replay the decision entries of [since, until) in the store at `url` through the policy
    file `candidate`, read page by page through the `at` index (never all at once). With
    `jobs` > 1 the period is cut into that many slices replayed by as many processes; the
    merged report is the same as with one."""
    slices = _slices(since, until, max(1, jobs))
    if len(slices) == 1:
        return _replay_slice(url, str(candidate), since, until, examples)
    report = ReplayReport()
    with ProcessPoolExecutor(len(slices), mp_context=get_context("spawn")) as pool:
        parts = pool.map(_replay_slice, *zip(*[(url, str(candidate), a, b, examples)
                                               for a, b in slices], strict=True))
        for part in parts:
            report.merge(part, examples=examples)
    return report


def _slices(since: float, until: float, jobs: int) -> list[tuple[float, float]]:
    step = (until - since) / jobs
    bounds = [since + i * step for i in range(jobs)] + [until]
    return [(bounds[i], bounds[i + 1]) for i in range(jobs) if bounds[i] < bounds[i + 1]] or [
        (since, until)]


def _replay_slice(url: str, candidate: str, since: float, until: float,
                  examples: int) -> ReplayReport:
    from stepguard.config.load import load_policy

    policy = load_policy(Path(candidate))
    engine = make_engine(url)
    try:
        entries = SqlAuditLog(engine, page_size=2000).entries(kind="decision", since=since,
                                                              until=until)
        return replay(entries, policy, examples=examples)
    finally:
        engine.dispose()
