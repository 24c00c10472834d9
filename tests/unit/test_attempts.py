"""The store calls around one verification (service/attempts): who is audited as locked out,
with what, how an unknown username is counted, and which clients a success trusts. Found by
`make mutate` (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stepguard.audit.ledger import AuditEntry, pseudonymise_ip
from stepguard.core.throttle import client_network, trusted_entry, user_factor_key, user_ip_key
from stepguard.service import attempts
from stepguard.service.runtime import Runtime
from stepguard.storage.records import Reserved
from tests.support.gateway import make_runtime

LIMIT = 4
ADDRESS = "203.0.113.9"


@pytest.fixture()
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, extra=f"throttle: {{hard_lock_after: {LIMIT}}}\n")
    yield rt
    rt.close()


def counted(key: str, consecutive: int) -> Reserved:
    return Reserved.counted(key, consecutive, locked_until=0.0, hard_locked=False)


def lockouts(runtime: Runtime) -> list[AuditEntry]:
    runtime.audit.flush(timeout=10)
    return [e for e in runtime.audit_log.entries(kind="verification") if e.outcome == "locked"]


def test_the_failure_that_reaches_the_hard_lock_is_audited_with_user_factor_and_limit(
        runtime: Runtime) -> None:
    reserved = (counted(user_factor_key("u1", "totp"), LIMIT),)
    attempts.failed(runtime, user_id="u1", reserved=reserved, factor="totp", client_ip=ADDRESS)
    [entry] = lockouts(runtime)
    assert (entry.subject, entry.factor) == ("u1", "totp")
    assert entry.detail["after_failures"] == LIMIT
    assert entry.request["client_ip"] == ADDRESS


def test_a_lockout_without_an_address_or_factor_records_none(runtime: Runtime) -> None:
    attempts.failed(runtime, user_id="u1", reserved=(counted(user_factor_key("u1", "pw"), LIMIT),))
    [entry] = lockouts(runtime)
    assert entry.factor == ""
    assert entry.request.get("client_ip", "") == ""


def test_a_lockout_entry_keeps_only_the_pseudonymised_address(runtime: Runtime) -> None:
    runtime.ip_key = b"k" * 32
    reserved = (counted(user_factor_key("u1", "totp"), LIMIT),)
    attempts.failed(runtime, user_id="u1", reserved=reserved, factor="totp", client_ip=ADDRESS)
    [entry] = lockouts(runtime)
    assert entry.request["client_ip"] == pseudonymise_ip(ADDRESS, key=b"k" * 32)
    assert ADDRESS not in repr(entry)


def test_only_the_users_own_ceiling_reaching_the_lock_is_a_lockout(runtime: Runtime) -> None:
    """The user+address key and the address key lock one client, not the account: no lockout
    notice for them; below or past the limit (already announced) neither."""
    attempts.failed(runtime, user_id="u1", factor="totp", client_ip=ADDRESS, reserved=(
        counted(user_ip_key("u1", "totp", ADDRESS), LIMIT), counted(f"ip:{ADDRESS}", LIMIT),
        counted(user_factor_key("u1", "totp"), LIMIT - 1)))
    attempts.failed(runtime, user_id="u1", factor="totp",
                    reserved=(counted(user_factor_key("u1", "totp"), LIMIT + 1),))
    assert lockouts(runtime) == []


def test_a_failure_without_a_user_records_nothing(runtime: Runtime) -> None:
    attempts.failed(runtime, user_id=None, reserved=(counted(user_factor_key("x", "pw"), LIMIT),))
    assert lockouts(runtime) == []


def test_an_unknown_username_is_counted_under_a_stable_subject_of_its_own() -> None:
    """The same username (any case) always meets the same counter, another username another
    one, the username itself is not in it, and no input makes it fail (a lone surrogate from a
    form would otherwise be a 500)."""
    subject = attempts.unknown_subject("Mallory")
    assert subject == attempts.unknown_subject("mallory")
    assert subject != attempts.unknown_subject("mallory2")
    assert "mallory" not in subject.lower()
    assert attempts.unknown_subject("a\ud800b") != attempts.unknown_subject("ab")


def test_a_success_trusts_only_the_device_and_network_the_client_really_has(
        runtime: Runtime) -> None:
    """No device cookie or no usable address adds no empty `device|` / `net|` entry."""
    attempts.trust_client(runtime, user_id="u1", factor="totp", client_ip=ADDRESS, device_id="")
    attempts.trust_client(runtime, user_id="u2", factor="totp", client_ip="", device_id="d1")
    attempts.trust_client(runtime, user_id="u3", factor="totp", client_ip="not-an-ip",
                          device_id="")
    trusted = {user: runtime.store.history.load(user).trusted for user in ("u1", "u2", "u3")}
    assert trusted == {"u1": {trusted_entry("totp", "net", client_network(ADDRESS))},
                       "u2": {trusted_entry("totp", "device", "d1")},
                       "u3": set()}
