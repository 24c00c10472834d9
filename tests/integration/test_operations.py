"""Operator commands and service rules: import, password change, key rotation, audit pruning,
revocation through the cache, and a factor added mid-challenge (SECURITY.md case 10)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pyotp
import pytest
from typer.testing import CliRunner

from stepguard.audit.commands import generate_signing_key_pem, verify_store
from stepguard.audit.ledger import load_signing_key, public_key_pem
from stepguard.cli.main import app
from stepguard.config.load import load_config
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import VerificationFailed
from stepguard.service.accounts import Accounts
from stepguard.service.guard import Guard
from stepguard.service.maintenance import prune_audit, rotate_totp_key
from stepguard.service.runtime import build_runtime
from stepguard.service.stepup import StepUp
from tests.support.gateway import Clock, make_runtime, seed_user, write_config

runner = CliRunner()
CTX = RequestContext(method="POST", host="app.test", path="/admin/users/bob/roles",
                     client_ip="203.0.113.4")


def test_users_import_from_yaml_and_csv_all_or_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "u.yaml").write_text("users:\n  - {username: carol, groups: [ops], password: pw1}\n"
                                     "  - {username: dave, email: d@example.com}\n")
    result = runner.invoke(app, ["users", "import", str(tmp_path / "u.yaml"), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "dave: generated password" in result.output
    (tmp_path / "u.csv").write_text("username,name,groups\nerin,Erin,\"a,b\"\n,nobody,\n")
    bad = runner.invoke(app, ["users", "import", str(tmp_path / "u.csv"), "-c", str(config)])
    assert bad.exit_code == 2 and "users[1].username" in bad.output
    listed = runner.invoke(app, ["users", "list", "-c", str(config)]).output
    assert "carol" in listed and "dave" in listed and "erin" not in listed


def test_password_change_and_disable_end_sessions_on_the_next_request(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    alice = seed_user(runtime)
    guard, accounts = Guard(runtime), Accounts(runtime)
    signed = accounts.sign_in("alice", alice.password, CTX)
    assert guard.check(CTX, signed.token).session is not None  # cached now
    accounts.set_password(alice.user.id, "a brand new password")
    assert guard.check(CTX, signed.token).session is None
    again = accounts.sign_in("alice", "a brand new password", CTX)
    assert guard.check(CTX, again.token).session is not None
    # Disabled from another process (the CLI): the epoch tells this instance's cache.
    config = tmp_path / "stepguard.yaml"
    result = runner.invoke(app, ["users", "disable", "alice", "-c", str(config), "--yes"])
    assert result.exit_code == 0, result.output
    assert guard.check(CTX, again.token).session is None
    runtime.close()


def test_totp_key_rotation_keeps_every_seed_usable(tmp_path: Path) -> None:
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock)
    alice = seed_user(runtime)
    runtime.close()
    config = tmp_path / "stepguard.yaml"
    text = config.read_text()
    new_key = base64.b64encode(secrets.token_bytes(32)).decode()
    text = text.replace("totp_keys: {k1:", f"totp_keys: {{k2: \"{new_key}\", k1:")
    config.write_text(text.replace("totp_current: k1", "totp_current: k2"))
    runtime = build_runtime(load_config(config), clock=clock)
    assert rotate_totp_key(runtime) == 1
    [factor] = runtime.store.factors.for_user(alice.user.id, kind="totp")
    assert factor.secret.startswith("v1.k2.")
    session = Accounts(runtime).sign_in("alice", alice.password, CTX).session
    check = Guard(runtime).check(CTX, None)
    decision = Guard(runtime).check(CTX, Accounts(runtime).sign_in("alice", alice.password,
                                                                   CTX).token).decision
    assert check.decision.login and decision.outcome is Outcome.STEP_UP
    challenge = StepUp(runtime).start(decision, CTX, session, return_url="/")
    passed = StepUp(runtime).verify_totp(challenge.id, session, alice.code(clock.now),
                                         client_ip="203.0.113.4")
    assert passed.grant is not None
    runtime.close()


def test_a_factor_added_after_the_challenge_cannot_satisfy_it(tmp_path: Path) -> None:
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock)
    alice = seed_user(runtime, with_totp=False)
    accounts, guard, stepup = Accounts(runtime), Guard(runtime), StepUp(runtime)
    signed = accounts.sign_in("alice", alice.password, CTX)
    decision = guard.check(CTX, signed.token).decision
    challenge = stepup.start(decision, CTX, signed.session, return_url="/")
    clock.advance(2)
    accounts.add_totp_secret(alice.user, alice.totp_secret)  # added after the challenge began
    clock.advance(1)
    assert "totp" not in stepup.methods_for(challenge, alice.user.id)
    with pytest.raises(VerificationFailed):
        stepup.verify_totp(challenge.id, signed.session,
                           pyotp.TOTP(alice.totp_secret).at(clock.now), client_ip="")
    runtime.close()


def test_audit_prune_keeps_a_verifiable_ledger(tmp_path: Path) -> None:
    clock = Clock()
    pem = generate_signing_key_pem().decode()
    extra = "audit: {retention: 1h}\n"
    runtime = make_runtime(tmp_path, clock=clock, extra=extra)
    runtime.close()
    config = tmp_path / "stepguard.yaml"
    config.write_text(config.read_text().replace(
        "secrets: {", "secrets: {audit_signing_key: \"" + pem.replace("\n", "\\n") + "\", "))
    runtime = build_runtime(load_config(config), clock=clock)
    alice = seed_user(runtime)
    guard = Guard(runtime)
    for _ in range(5):
        guard.check(CTX, None)
    clock.advance(7200)
    for _ in range(3):
        guard.check(CTX, None)
    runtime.audit.flush(timeout=10)
    before = runtime.audit_log.count()
    checkpoint = prune_audit(runtime, keep_seconds=3600)
    assert checkpoint is not None and checkpoint.count_pruned == before - 3
    runtime.audit.flush(timeout=10)
    url = str(runtime.store.engine.url)
    public = public_key_pem(load_signing_key(pem.encode()))
    report = verify_store(url, public_key_pem=public)
    assert report.ok, report
    (tmp_path / "public.pem").write_bytes(public)
    cli = runner.invoke(app, ["audit", "verify", "-c", str(config), "--public-key",
                              str(tmp_path / "public.pem")])
    assert cli.exit_code == 0 and "ledger intact" in cli.output
    assert alice.user.id
    runtime.close()


def test_users_import_splits_csv_groups_and_refuses_a_file_that_is_no_list(
        tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "bad.yaml").write_text("users: {username: carol}\n")
    bad = runner.invoke(app, ["users", "import", str(tmp_path / "bad.yaml"), "-c", str(config)])
    assert bad.exit_code == 2 and "expected a list of users" in bad.output
    (tmp_path / "u.csv").write_text("username,groups,password\nerin,\"ops; audit,\",pw-erin-1\n")
    good = runner.invoke(app, ["users", "import", str(tmp_path / "u.csv"), "-c", str(config)])
    assert good.exit_code == 0, good.output
    runtime = build_runtime(load_config(config))
    try:
        erin = runtime.store.users.by_username("erin")
        assert erin is not None and erin.groups == frozenset({"ops", "audit"})
    finally:
        runtime.close()


def test_totp_key_rotation_leaves_seeds_under_the_current_key_alone(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    alice = seed_user(runtime)
    try:
        [before] = runtime.store.factors.for_user(alice.user.id, kind="totp")
        assert rotate_totp_key(runtime) == 0
        [after] = runtime.store.factors.for_user(alice.user.id, kind="totp")
        assert after == before
    finally:
        runtime.close()


def test_audit_prune_needs_a_signing_key_and_keeps_a_young_ledger_whole(tmp_path: Path) -> None:
    from stepguard.core.errors import ConfigError

    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock)
    try:
        with pytest.raises(ConfigError, match="audit_signing_key"):
            prune_audit(runtime, keep_seconds=3600)
    finally:
        runtime.close()
    pem = generate_signing_key_pem().decode()
    config = tmp_path / "stepguard.yaml"
    config.write_text(config.read_text().replace(
        "secrets: {", "secrets: {audit_signing_key: \"" + pem.replace("\n", "\\n") + "\", "))
    runtime = build_runtime(load_config(config), clock=clock)
    try:
        Guard(runtime).check(CTX, None)
        runtime.audit.flush(timeout=10)
        count = runtime.audit_log.count()
        assert prune_audit(runtime, keep_seconds=3600) is None  # nothing old enough to drop
        runtime.audit.flush(timeout=10)
        assert runtime.audit_log.count() == count
    finally:
        runtime.close()
