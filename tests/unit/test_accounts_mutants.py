"""Accounts rules that only the slow HTTP tests held before: an operator's unlock and a new
password lift the user's hard lock (and only that user's), and a wrong password's audit entry
keeps only the pseudonymised address. Found by `make mutate` on `service/accounts.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stepguard.audit.ledger import pseudonymise_ip
from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.errors import Throttled
from stepguard.core.throttle import ThrottleSettings, ip_key, user_factor_key, user_ip_key
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import UserRecord
from tests.support.gateway import Clock, write_config
from tests.unit import test_accounts_sign_in
from tests.unit.test_accounts_sign_in import (
    BERLIN,
    LIMIT,
    PASSWORD,
    SETTINGS,
    client,
    counts,
    entries,
    place_on,
    refused,
)

accounts = test_accounts_sign_in.accounts  # fixtures: Accounts and Alice on `runtime`
alice = test_accounts_sign_in.alice


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """The in-memory runtime whose store hard-locks after LIMIT failures, as configured."""
    rt = build_runtime(load_config(write_config(tmp_path, extra=SETTINGS)), clock=Clock(),
                       store=MemoryStore(throttle=ThrottleSettings(hard_limit=LIMIT)),
                       audit_log=MemoryAuditLog())
    yield rt
    rt.close()


def lock_out(runtime: Runtime, accounts: Accounts, username: str) -> None:
    for _ in range(LIMIT):
        refused(accounts, username, "wrong", client())
        place_on(runtime)
    with pytest.raises(Throttled) as locked:
        accounts.sign_in(username, PASSWORD, client())
    assert locked.value.locked


def test_an_operators_unlock_lifts_the_users_hard_lock(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    bob = accounts.add_user("bob", password=PASSWORD)
    lock_out(runtime, accounts, "alice")
    refused(accounts, "bob", "wrong", client())
    accounts.unlock(alice.id)
    assert counts(runtime) == {ip_key(BERLIN): LIMIT + 1,
                               user_ip_key(bob.id, "password", BERLIN): 1,
                               user_factor_key(bob.id, "password"): 1}
    assert accounts.sign_in("alice", PASSWORD, client()).user.id == alice.id


def test_a_new_password_lifts_the_users_hard_lock(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    lock_out(runtime, accounts, "alice")
    accounts.set_password(alice.id, "a brand new passphrase")
    assert user_factor_key(alice.id, "password") not in counts(runtime)
    assert accounts.sign_in("alice", "a brand new passphrase", client()).user.id == alice.id


def test_a_wrong_passwords_entry_keeps_only_the_pseudonymised_address(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    runtime.ip_key = b"k" * 32
    refused(accounts, "alice", "wrong", client())
    [entry] = [e for e in entries(runtime, "verification") if e.outcome == "failed:invalid"]
    assert entry.subject == alice.id
    assert entry.request["client_ip"] == pseudonymise_ip(BERLIN, key=b"k" * 32)
