"""Accounts' operator actions on the in-memory store: what each changes, when, and the audit
entry it leaves (who was acted on, what happened, by whom) — an admin action that is not in the
ledger, or is there without its subject, is one an auditor cannot find."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stepguard.audit.ledger import AuditEntry
from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.context import AuthEvent
from stepguard.core.errors import VerificationFailed
from stepguard.core.levels import Level
from stepguard.factors.password import verify_password
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.storage.agent_tokens import AgentTokenRecord
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import SessionRecord, UserRecord
from tests.contract import build
from tests.support.gateway import Clock, write_config


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(tmp_path)), clock=Clock(),
                       store=MemoryStore(), audit_log=MemoryAuditLog())
    yield rt
    rt.close()


def only_entry(runtime: Runtime, after: int = 0) -> AuditEntry:
    """The one admin or session entry written after ledger position `after`."""
    runtime.audit.flush(timeout=5)
    [entry] = [e for e in runtime.audit_log.entries(after_seq=after)
               if e.kind in ("admin", "session")]
    return entry


def ended(runtime: Runtime, session: SessionRecord) -> bool:
    return runtime.store.sessions.get(session.id) is None  # the store returns live ones only


def matches(stored_hash: str, password: str) -> bool:
    try:
        verify_password(stored_hash=stored_hash, password=password)
    except VerificationFailed:
        return False
    return True


def with_everything(runtime: Runtime, accounts: Accounts, name: str = "alice"
                    ) -> tuple[UserRecord, list[SessionRecord], AgentTokenRecord, int]:
    """A user with two live sessions, a TOTP factor, recovery codes and a live agent token;
    and the ledger position after the set-up's entries."""
    user = accounts.add_user(name, password="correct horse battery")
    now = runtime.now()
    sessions = [build.session(user.id, created=now, last_seen=now,
                              events=(AuthEvent(factor="password", amr=("pwd",),
                                                level=Level.AAL1, at=now),))
                for _ in range(2)]
    for session in sessions:
        runtime.store.sessions.add(session)
    runtime.store.factors.add(build.factor(user.id, kind="totp"))
    runtime.store.factors.replace_recovery_codes(user.id, ["a" * 64, "b" * 64], now=now)
    agent = AgentTokenRecord(id=build.new_id()[:16], user_id=user.id, name="agent",
                             secret_hash="ab" * 32, created=now, expires=now + 3600)
    runtime.store.agent_tokens.add(agent)
    runtime.audit.flush(timeout=5)
    return user, sessions, agent, runtime.audit_log.count()


def test_add_user_stores_what_it_was_given_and_audits_it(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user = accounts.add_user("alice", password="correct horse battery", display_name="Alice A",
                             email="alice@example.test", groups=("ops", "finance"))
    stored = runtime.store.users.get(user.id)
    assert stored is not None and stored == user
    assert (stored.username, stored.display_name, stored.email) == (
        "alice", "Alice A", "alice@example.test")
    assert stored.groups == frozenset({"ops", "finance"}) and stored.created == runtime.now()
    assert matches(stored.password_hash, "correct horse battery")
    assert not matches(stored.password_hash, "correct horse battery!")
    entry = only_entry(runtime)
    assert (entry.kind, entry.subject, entry.outcome) == ("admin", user.id, "user_added")
    assert entry.detail == {"username": "alice"}


def test_a_user_without_a_password_has_no_password_hash(runtime: Runtime) -> None:
    user = Accounts(runtime).add_user("bob", password=None)
    assert user.password_hash == "" and (user.display_name, user.email) == ("", "")
    assert user.groups == frozenset()


def test_disable_user_ends_sessions_and_agents_now_and_audits_who_did_it(
        runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, sessions, agent, mark = with_everything(runtime, accounts)
    assert accounts.disable_user(user.id) is True
    stored = runtime.store.users.get(user.id)
    assert stored is not None and stored.disabled
    assert all(ended(runtime, s) for s in sessions)
    revoked = runtime.store.agent_tokens.get(agent.id)
    assert revoked is not None and revoked.revoked_at == runtime.now()
    entry = only_entry(runtime, mark)
    assert (entry.kind, entry.subject, entry.outcome) == ("admin", user.id, "user_disabled")
    assert entry.detail == {"by": "cli", "agents_revoked": 1}


@pytest.mark.parametrize(("by", "kind"), [("cli", "admin"), ("admin:carol", "admin"),
                                          ("owner", "session")])
def test_end_all_sessions_keeps_the_asking_browser_and_audits_by_whom(
        runtime: Runtime, by: str, kind: str) -> None:
    accounts = Accounts(runtime)
    user, (kept, gone), agent, mark = with_everything(runtime, accounts)
    assert accounts.end_all_sessions(user.id, except_session=kept.id, by=by) == (1, 1)
    assert not ended(runtime, kept) and ended(runtime, gone)
    assert runtime.store.agent_tokens.get(agent.id).revoked_at == runtime.now()  # type: ignore[union-attr]
    entry = only_entry(runtime, mark)
    assert (entry.kind, entry.subject, entry.outcome) == (kind, user.id, "sessions_ended")
    assert entry.session == runtime.session_ref(kept.id) != ""
    assert entry.detail == {"by": by, "sessions": 1, "agents_revoked": 1}


def test_an_operator_ending_sessions_ends_them_all(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, sessions, _, mark = with_everything(runtime, accounts)
    assert accounts.end_sessions(user.id) == 2
    assert all(ended(runtime, s) for s in sessions)
    entry = only_entry(runtime, mark)
    assert (entry.kind, entry.session) == ("admin", "")
    assert entry.detail == {"by": "cli", "sessions": 2, "agents_revoked": 1}


def test_reset_factors_removes_second_factors_codes_sessions_and_agents(
        runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, sessions, agent, mark = with_everything(runtime, accounts)
    assert accounts.reset_factors(user.id, by="admin:carol") == 1
    kinds = [f.kind for f in runtime.store.factors.for_user(user.id)]
    assert "totp" not in kinds
    assert runtime.store.factors.recovery_codes(user.id) == ()
    assert all(ended(runtime, s) for s in sessions)
    assert runtime.store.agent_tokens.get(agent.id).revoked_at == runtime.now()  # type: ignore[union-attr]
    entry = only_entry(runtime, mark)
    assert (entry.kind, entry.subject, entry.outcome) == ("admin", user.id, "factors_reset")
    assert entry.detail == {"by": "admin:carol", "count": 1, "agents_revoked": 1}


def test_reset_factors_defaults_to_the_cli_as_the_actor(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, _, _, mark = with_everything(runtime, accounts)
    accounts.reset_factors(user.id)
    assert only_entry(runtime, mark).detail["by"] == "cli"


def test_set_password_ends_everything_lifts_locks_and_audits(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, sessions, agent, mark = with_everything(runtime, accounts)
    assert accounts.set_password(user.id, "a brand new passphrase", by="admin:carol") is True
    stored = runtime.store.users.get(user.id)
    assert stored is not None and matches(stored.password_hash, "a brand new passphrase")
    assert all(ended(runtime, s) for s in sessions)
    assert runtime.store.agent_tokens.get(agent.id).revoked_at == runtime.now()  # type: ignore[union-attr]
    entry = only_entry(runtime, mark)
    assert (entry.kind, entry.subject, entry.outcome) == ("admin", user.id, "password_set")
    assert entry.detail == {"by": "admin:carol", "agents_revoked": 1}


def test_unlock_is_audited_with_its_actor(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, _, _, mark = with_everything(runtime, accounts)
    accounts.unlock(user.id)
    entry = only_entry(runtime, mark)
    assert (entry.kind, entry.subject, entry.outcome) == ("admin", user.id, "unlocked")
    assert entry.detail == {"by": "cli"}


def test_the_cli_is_the_actor_when_none_is_named(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, _, _, mark = with_everything(runtime, accounts)
    accounts.end_all_sessions(user.id)
    assert only_entry(runtime, mark).detail["by"] == "cli"
    mark = runtime.audit_log.count()
    accounts.set_password(user.id, "another long passphrase")
    assert only_entry(runtime, mark).detail["by"] == "cli"


def test_an_operator_ending_sessions_is_named_as_the_actor(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, _, _, mark = with_everything(runtime, accounts)
    accounts.end_sessions(user.id, by="admin:carol")
    assert only_entry(runtime, mark).detail["by"] == "admin:carol"


def test_reset_factors_keeps_a_password_factor(runtime: Runtime) -> None:
    accounts = Accounts(runtime)
    user, _, _, _ = with_everything(runtime, accounts)
    password = build.factor(user.id, kind="password")
    runtime.store.factors.add(password)
    assert accounts.reset_factors(user.id) == 1  # the TOTP only
    assert [f.id for f in runtime.store.factors.for_user(user.id)] == [password.id]
