"""The admin console's actions and views in the CLI: end a user's sessions, the paged and
filtered audit view, the ledger's status, the policy's versions and diff. Destructive actions
ask for confirmation (`--yes` to skip it in scripts) and are audited as `cli:<OS user>`."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

import typer

from stepguard.cli.output import console, errors
from stepguard.cli.replay_cmd import moment
from stepguard.cli.server_cmd import CONFIG, load, runtime_for, user_named

YES = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")


def operator() -> str:
    """How CLI actions name their operator in the ledger."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def confirm(question: str, yes: bool) -> None:
    if not yes:
        typer.confirm(question, abort=True)


def users_end_sessions(username: str, config: Path = CONFIG, yes: bool = YES) -> None:
    """End every session and agent token of a user (honoured by the next request everywhere)."""
    from stepguard.service.accounts import Accounts

    confirm(f"End every session and agent token of {username}?", yes)
    with user_named(username, config) as (runtime, user):
        sessions, agents = Accounts(runtime).end_all_sessions(user.id, by=operator())
    console.print(f"ended {sessions} session(s) of {username} and revoked {agents} agent "
                  "token(s)")


def audit_list(
    config: Path = CONFIG,
    user: str = typer.Option("", help="username or subject id"),
    rule: str = typer.Option(""), outcome: str = typer.Option(""), kind: str = typer.Option(""),
    since: str = typer.Option("", help="a duration (7d) or an ISO time"),
    until: str = typer.Option("", help="a duration ago or an ISO time"),
    before: int = typer.Option(0, help="show entries before this seq (the next page)"),
    limit: int = typer.Option(50, min=1, max=1000),
    format: str = typer.Option("text", "--format", help="text or jsonl"),
) -> None:
    """Audit entries, newest first, one page at a time, read from the store's indexes."""
    from stepguard.audit.ledger import entry_record

    runtime = runtime_for(config)
    try:
        subject = user
        if user:
            found = runtime.store.users.by_username(user)
            subject = found.id if found is not None else user
        now = time.time()
        entries = runtime.audit_log.latest(
            before_seq=before or None, limit=limit, subject=subject or None, rule=rule or None,
            outcome=outcome or None, kind=kind or None,
            since=moment(since, now, "--since") if since else None,
            until=moment(until, now, "--until") if until else None)
    finally:
        runtime.close()
    for entry in entries:
        if format == "jsonl":
            print(json.dumps(entry_record(entry), sort_keys=True))
            continue
        request = entry.request
        where = f"{request.get('method', '')} {request.get('host', '')}{request.get('path', '')}"
        console.print(f"#{entry.seq}\t{entry.kind}\t{entry.subject}\t{entry.rule}\t"
                      f"{entry.decision}\t{entry.outcome}\t{entry.factor}\t{where.strip()}",
                      markup=False)
    if len(entries) == limit:
        errors.print(f"more: --before {entries[-1].seq}")


def audit_status(config: Path = CONFIG) -> None:
    """The ledger's head, size and last checkpoint (`audit verify` re-checks every entry)."""
    from stepguard.service.runtime import store_url
    from stepguard.storage.audit_store import SqlAuditLog
    from stepguard.storage.engine import make_engine

    engine = make_engine(store_url(load(config)))
    try:
        state = SqlAuditLog(engine).state()
    finally:
        engine.dispose()
    console.print(f"entries: {state.count}; head: #{state.head.seq} {state.head.hash}; "
                  f"pruned up to: #{state.checkpoint_seq}", markup=False)


def policy_versions(config: Path = CONFIG) -> None:
    """Every policy version `serve` has loaded, newest first."""
    for version in _versions(config).latest(1000):
        console.print(f"{version.version}\t{version.digest[:16]}\t{version.source}\t"
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(version.loaded_at))} "
                      "UTC", markup=False)


def policy_diff(config: Path = CONFIG,
                old: int = typer.Option(0, "--from", help="default: the version before --to"),
                new: int = typer.Option(0, "--to", help="default: the newest")) -> None:
    """A unified diff between two recorded policy versions."""
    from stepguard.storage.policy_versions import policy_diff as diff

    versions = _versions(config)
    newest = versions.latest(1000)
    target = versions.get(new) if new else (newest[0] if newest else None)
    if target is None:
        errors.print("no such policy version")
        raise typer.Exit(1)
    base = versions.get(old) if old else next(
        (v for v in newest if v.version < target.version), None)
    if base is None:
        console.print(f"version {target.version} has no earlier version")
        return
    print(diff(base, target) or "(no textual change)", end="")


def _versions(config: Path):  # type: ignore[no-untyped-def]
    from stepguard.service.runtime import store_url
    from stepguard.storage.engine import make_engine
    from stepguard.storage.policy_versions import PolicyVersions

    return PolicyVersions(make_engine(store_url(load(config))))
