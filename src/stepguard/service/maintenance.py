"""Operator tasks: importing users, rotating the TOTP encryption key, pruning the audit ledger."""

from __future__ import annotations

import csv
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from stepguard.audit.ledger import Checkpoint, load_signing_key
from stepguard.core.errors import ConfigError, Problem
from stepguard.factors.secretbox import needs_reseal, reseal, seed_aad
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime


def read_user_rows(path: Path) -> list[dict[str, Any]]:
    """Rows from a YAML list (or `{users: [...]}`) or a CSV file with a header line."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows = data.get("users") if isinstance(data, Mapping) else data
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError([Problem(str(path), "users", "expected a list of users")])
    return [dict(r) for r in rows]


def import_users(runtime: Runtime, rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Add every row (username, name, email, groups, password); all rows are checked first.

    Returns (username, generated password) for rows without a password.
    """
    rows = list(rows)
    problems = [Problem("", f"users[{i}].username", "expected a username")
                for i, row in enumerate(rows) if not str(row.get("username") or "").strip()]
    if problems:
        raise ConfigError(problems)
    accounts, generated = Accounts(runtime), []
    with runtime.store.transaction():
        for row in rows:
            password = str(row.get("password") or "")
            if not password:
                password = secrets.token_urlsafe(12)
                generated.append((str(row["username"]), password))
            accounts.add_user(str(row["username"]).strip(), password=password,
                              display_name=str(row.get("name") or ""),
                              email=str(row.get("email") or ""), groups=_groups(row.get("groups")))
    return generated


def _groups(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(g.strip() for g in value.replace(";", ",").split(",") if g.strip())
    return tuple(str(g) for g in value or ())


def rotate_totp_key(runtime: Runtime) -> int:
    """Re-seal every TOTP seed sealed under an older key with `secrets.totp_current`."""
    store, rotated = runtime.store, 0
    for user in store.users.list(limit=1_000_000):
        for factor in store.factors.for_user(user.id, kind="totp"):
            if not factor.secret or not needs_reseal(factor.secret, runtime.keyring):
                continue
            sealed = reseal(keyring=runtime.keyring, token=factor.secret,
                            aad=seed_aad(user_id=user.id, factor_id=factor.id))
            with store.transaction():
                store.factors.remove(factor.id, user_id=user.id)
                store.factors.add(replace(factor, secret=sealed))
            rotated += 1
    runtime.record(kind="admin", outcome="totp_key_rotated",
                   detail={"count": rotated, "key": runtime.keyring.current})
    return rotated


def prune_audit(runtime: Runtime, *, keep_seconds: float) -> Checkpoint | None:
    """Drop ledger entries older than `keep_seconds` behind a signed checkpoint."""
    pem = runtime.config.secrets.audit_signing_key
    if not pem:
        raise ConfigError([Problem("", "secrets.audit_signing_key",
                                   "expected a PEM Ed25519 private key to sign the checkpoint")])
    cutoff = runtime.now() - keep_seconds
    first_kept = next((e.seq for e in runtime.audit_log.entries() if e.at >= cutoff), None)
    if first_kept is None or first_kept <= 1:
        return None
    checkpoint = runtime.audit_log.prune(before_seq=first_kept,
                                         signing_key=load_signing_key(pem.encode()))
    runtime.record(kind="admin", outcome="audit_pruned",
                   detail={"checkpoint_seq": checkpoint.seq, "pruned": checkpoint.count_pruned})
    return checkpoint
