"""The audit ledger: hash-chained entries, verification, signed checkpoints, export, writer."""

from stepguard.audit.export import export_jsonl, read_export, read_jsonl
from stepguard.audit.ledger import (
    AuditEntry,
    AuditEvent,
    ChainFault,
    ChainHead,
    Checkpoint,
    VerifyReport,
    pseudonymise_ip,
    redact,
    request_summary,
    seal,
    session_ref,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint,
)
from stepguard.audit.writer import AuditSink, AuditWriter

__all__ = [
    "AuditEntry",
    "AuditEvent",
    "AuditSink",
    "AuditWriter",
    "ChainFault",
    "ChainHead",
    "Checkpoint",
    "VerifyReport",
    "export_jsonl",
    "pseudonymise_ip",
    "read_export",
    "read_jsonl",
    "redact",
    "request_summary",
    "seal",
    "session_ref",
    "sign_checkpoint",
    "verify_chain",
    "verify_checkpoint",
]
