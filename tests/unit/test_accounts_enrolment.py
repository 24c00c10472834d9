"""Accounts' factor changes on the in-memory store: the fresh proof each needs (aal1 while the
password is the only factor, aal2 once a confirmed second factor exists or when a factor is
removed; at most 10 minutes old), the step-up challenge that gets one, TOTP and passkey
enrolment (what is stored, sealed to whom, when), removing the password or a factor, new
recovery codes, and what every change does to the user's other sessions and the ledger. Found
by `make mutate` (issue 16)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepguard.audit.ledger import AuditEntry
from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.context import RequestContext
from stepguard.core.decision import Requirement
from stepguard.core.errors import VerificationFailed
from stepguard.core.levels import Level
from stepguard.factors.recovery import hash_recovery_code
from stepguard.factors.secretbox import open_sealed, seed_aad
from stepguard.factors.totp import provisioning_uri, qr_svg, totp_at
from stepguard.factors.webauthn import user_handle
from stepguard.service.accounts import FRESH_FOR_ENROLMENT, Accounts, NeedsFreshProof
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import FactorRecord, SessionRecord, UserRecord
from tests.contract import build
from tests.support.gateway import Clock, write_config
from tests.support.soft_authenticator import SoftAuthenticator, b64url

ORIGIN = "http://localhost:9091"
FRESH_TEXT = "Confirm it's you before changing how you sign in."
PAGE = RequestContext(method="POST", host="localhost", path="/account/factors",
                      client_ip="198.51.100.7")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(tmp_path)), clock=Clock(), store=MemoryStore(),
                       audit_log=MemoryAuditLog())
    yield rt
    rt.close()


@pytest.fixture
def accounts(runtime: Runtime) -> Accounts:
    return Accounts(runtime)


@pytest.fixture
def alice(runtime: Runtime) -> UserRecord:
    user = build.user("alice", display_name="Alice A", created=runtime.now())
    runtime.store.users.add(user)
    return user


def session(runtime: Runtime, user: UserRecord, level: Level = Level.AAL2,
            age: float = 0.0) -> SessionRecord:
    """A live session of `user` whose only proof is `level`, `age` seconds old."""
    now = runtime.now()
    factor = "password" if level is Level.AAL1 else "totp"
    record = build.session(user.id, created=now - age, last_seen=now,
                           events=(build.event(factor, level, at=now - age),))
    runtime.store.sessions.add(record)
    return record


def totp(runtime: Runtime, user: UserRecord, *, confirmed: bool = True) -> FactorRecord:
    factor = build.factor(user.id, kind="totp", data={} if confirmed else {"confirmed": False})
    runtime.store.factors.add(factor)
    return factor


def passkey(runtime: Runtime, user: UserRecord, credential: bytes = b"cred-1") -> FactorRecord:
    factor = build.factor(user.id, kind="webauthn", credential_id=credential, public_key=b"k")
    runtime.store.factors.add(factor)
    return factor


def enrolment_entries(runtime: Runtime) -> list[AuditEntry]:
    runtime.audit.flush(timeout=5)
    return list(runtime.audit_log.entries(kind="enrolment"))


def changed(runtime: Runtime, mine: SessionRecord, other: SessionRecord, factor: str,
            what: str) -> None:
    """The one factor change audited, and it ended the user's other session but not this one."""
    assert runtime.store.sessions.get(mine.id) is not None
    assert runtime.store.sessions.get(other.id) is None
    [entry] = enrolment_entries(runtime)
    assert (entry.subject, entry.factor, entry.outcome) == (mine.user_id, factor, what)
    assert entry.session == runtime.session_ref(mine.id) != ""


def refused_fresh(call: object) -> None:
    with pytest.raises(NeedsFreshProof) as caught:
        call()  # type: ignore[operator]
    assert str(caught.value) == FRESH_TEXT


# ------------------------------------------------------------------ the fresh proof


def test_a_password_only_user_changes_factors_with_a_fresh_password(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    totp(runtime, alice, confirmed=False)  # still being set up: no second factor yet
    runtime.store.factors.add(build.factor(alice.id, kind="password"))
    accounts.require_fresh(session(runtime, alice, Level.AAL1))
    assert accounts.regenerate_recovery_codes(session(runtime, alice, Level.AAL1))


def test_a_confirmed_second_factor_makes_aal2_the_proof(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    totp(runtime, alice)
    refused_fresh(lambda: accounts.require_fresh(session(runtime, alice, Level.AAL1)))
    accounts.require_fresh(session(runtime, alice, Level.AAL2))


def test_a_passkey_is_a_second_factor(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    passkey(runtime, alice)
    refused_fresh(lambda: accounts.require_fresh(session(runtime, alice, Level.AAL1)))


def test_removing_needs_aal2_even_without_a_second_factor(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    pending = totp(runtime, alice, confirmed=False)
    aal1 = session(runtime, alice, Level.AAL1)
    refused_fresh(lambda: accounts.require_fresh(aal1, first_factor_ok=False))
    refused_fresh(lambda: accounts.remove_factor(aal1, pending.id))
    refused_fresh(lambda: accounts.remove_password(aal1))
    assert runtime.store.factors.get(pending.id) is not None
    accounts.require_fresh(session(runtime, alice, Level.AAL2), first_factor_ok=False)


def test_the_proof_is_fresh_for_exactly_ten_minutes(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    totp(runtime, alice)
    accounts.require_fresh(session(runtime, alice, Level.AAL2, age=FRESH_FOR_ENROLMENT))
    accounts.require_fresh(session(runtime, alice, Level.AAL3, age=0))
    refused_fresh(lambda: accounts.require_fresh(
        session(runtime, alice, Level.AAL2, age=FRESH_FOR_ENROLMENT + 0.5)))


def test_the_fresh_proof_challenge_asks_for_aal2_from_ten_minutes(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    aal1 = session(runtime, alice, Level.AAL1)
    assert accounts.fresh_proof_challenge(aal1, PAGE, "/account") is None  # sign in again
    totp(runtime, alice)
    challenge = accounts.fresh_proof_challenge(aal1, PAGE, "/account/factors?x=1")
    assert challenge is not None
    stored = runtime.store.challenges.get(challenge.id)
    assert stored == challenge
    assert (stored.user_id, stored.session_id) == (alice.id, aal1.id)
    assert stored.requirement == Requirement(level=Level.AAL2, max_age=FRESH_FOR_ENROLMENT)
    assert (stored.rule, stored.scope, stored.reasons) == (
        "factor-change", "factor-change", (FRESH_TEXT,))
    assert stored.return_url == "/account/factors?x=1"
    runtime.audit.flush(timeout=5)
    [started] = runtime.audit_log.entries(kind="challenge")
    assert started.request["path"] == "/account/factors"


# ------------------------------------------------------------------ TOTP


def test_begin_totp_stores_a_pending_factor_sealed_to_this_user(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    enrolment = accounts.begin_totp(session(runtime, alice, Level.AAL1), alice)
    stored = runtime.store.factors.get(enrolment.factor_id)
    assert stored is not None
    assert (stored.user_id, stored.kind, stored.label, stored.created, stored.data) == (
        alice.id, "totp", "Authenticator app", runtime.now(), {"confirmed": False})
    assert open_sealed(keyring=runtime.keyring, token=stored.secret,
                       aad=seed_aad(user_id=alice.id, factor_id=stored.id)) == \
        enrolment.secret.encode()
    uri = provisioning_uri(secret=enrolment.secret, account="alice",
                           issuer=runtime.config.portal.title)
    assert (enrolment.uri, enrolment.svg) == (uri, qr_svg(uri))
    assert enrolment_entries(runtime) == []


def test_begin_totp_needs_the_fresh_proof(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    totp(runtime, alice)
    refused_fresh(lambda: accounts.begin_totp(session(runtime, alice, Level.AAL1), alice))


def test_confirm_totp_makes_it_a_factor_from_the_code_it_accepted(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine, other = session(runtime, alice), session(runtime, alice)
    enrolment = accounts.begin_totp(mine, alice)
    pending = runtime.store.factors.get(enrolment.factor_id)
    runtime.clock.advance(40)  # type: ignore[attr-defined]
    step = int(runtime.now() // 30)
    accounts.confirm_totp(mine, enrolment.factor_id, totp_at(secret=enrolment.secret, step=step))
    stored = runtime.store.factors.get(enrolment.factor_id)
    assert pending is not None and stored is not None
    assert (stored.user_id, stored.kind, stored.label, stored.secret) == (
        alice.id, "totp", "Authenticator app", pending.secret)
    assert (stored.created, stored.last_step, stored.data) == (runtime.now(), step, {})
    assert runtime.store.factors.for_user(alice.id) == (stored,)
    changed(runtime, mine, other, "totp", "enrolled")


def test_confirm_totp_refuses_a_wrong_code_and_keeps_it_pending(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine = session(runtime, alice)
    enrolment = accounts.begin_totp(mine, alice)
    step = int(runtime.now() // 30)
    with pytest.raises(VerificationFailed):
        accounts.confirm_totp(mine, enrolment.factor_id,
                              totp_at(secret=enrolment.secret, step=step + 5))
    stored = runtime.store.factors.get(enrolment.factor_id)
    assert stored is not None and stored.data == {"confirmed": False}
    assert enrolment_entries(runtime) == []


def test_confirm_totp_only_confirms_this_users_pending_totp(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    bob = build.user("bob", created=runtime.now())
    runtime.store.users.add(bob)
    bobs = accounts.begin_totp(session(runtime, bob), bob)
    key = passkey(runtime, alice)
    mine = session(runtime, alice)
    code = totp_at(secret=bobs.secret, step=int(runtime.now() // 30))
    for factor_id in (bobs.factor_id, key.id, "no-such-factor"):
        with pytest.raises(VerificationFailed) as caught:
            accounts.confirm_totp(mine, factor_id, code)
        assert str(caught.value) == "Start the set-up again."
    stored = runtime.store.factors.get(bobs.factor_id)
    assert stored is not None and stored.data == {"confirmed": False}
    assert runtime.store.factors.get(key.id) == key


def test_a_seeded_totp_secret_is_confirmed_and_older_than_now(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    accounts.add_totp_secret(alice, "JBSWY3DPEHPK3PXP", label="Phone")
    accounts.add_totp_secret(alice, "KRSXG5CTMVRXEZLU")
    by_label = {f.label: f for f in runtime.store.factors.for_user(alice.id)}
    phone, app = by_label["Phone"], by_label["Authenticator app"]
    assert (phone.kind, phone.label, phone.created, phone.data) == (
        "totp", "Phone", runtime.now() - 1, {})
    assert (app.created, app.data) == (runtime.now() - 1, {})
    assert open_sealed(keyring=runtime.keyring, token=phone.secret,
                       aad=seed_aad(user_id=alice.id, factor_id=phone.id)) == b"JBSWY3DPEHPK3PXP"


# ------------------------------------------------------------------ passkeys


def test_a_passkey_is_registered_to_this_user_and_session(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    existing = passkey(runtime, alice, b"cred-old")
    totp(runtime, alice)
    mine, other = session(runtime, alice), session(runtime, alice)
    options, enrolment_id = accounts.begin_passkey(mine, alice)
    shown = json.loads(options)
    assert shown["user"] == {"id": b64url(user_handle(alice.id)), "name": "alice",
                             "displayName": "Alice A"}
    assert [c["id"] for c in shown["excludeCredentials"]] == [b64url(b"cred-old")]
    assert shown["authenticatorSelection"]["userVerification"] == "required"
    record = runtime.store.challenges.get(enrolment_id)
    assert record is not None
    assert (record.user_id, record.session_id, record.rule) == (alice.id, mine.id, "enrol-passkey")
    assert (record.requirement, record.created) == (Requirement(), runtime.now())
    assert record.expires > runtime.now()
    authenticator = SoftAuthenticator(origin=ORIGIN)
    answer = authenticator.create(options)
    runtime.clock.advance(5)  # type: ignore[attr-defined]
    accounts.finish_passkey(mine, enrolment_id, answer, "Laptop " + "x" * 80)
    [new] = [f for f in runtime.store.factors.for_user(alice.id, kind="webauthn")
             if f.id != existing.id]
    [credential] = authenticator.credentials.values()
    assert (new.user_id, new.label, new.created) == (alice.id, "Laptop " + "x" * 53,
                                                      runtime.now())
    assert (new.credential_id, new.sign_count) == (credential.credential_id, 0)
    assert new.public_key == credential.cose_public_key()
    assert new.data == {"uv": True, "aaguid": "adce0002-35bc-c60a-648b-0b25f1f05503",
                        "backup_eligible": False}
    changed(runtime, mine, other, "webauthn", "enrolled")


def test_a_passkey_without_a_label_is_called_passkey(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine = session(runtime, alice, Level.AAL1)
    options, enrolment_id = accounts.begin_passkey(mine, alice)
    accounts.finish_passkey(mine, enrolment_id, SoftAuthenticator(origin=ORIGIN).create(options),
                            "")
    [new] = runtime.store.factors.for_user(alice.id)
    assert new.label == "Passkey"


def test_each_passkey_is_its_own_factor_and_keeps_its_counter(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine = session(runtime, alice)
    authenticator = SoftAuthenticator(origin=ORIGIN)
    for count in (7, 0):
        options, enrolment_id = accounts.begin_passkey(mine, alice)
        accounts.finish_passkey(mine, enrolment_id,
                                authenticator.create(options, sign_count=count), f"key {count}")
    first, second = sorted(runtime.store.factors.for_user(alice.id), key=lambda f: f.label)
    assert (first.sign_count, second.sign_count) == (0, 7)
    assert first.id != second.id
    assert runtime.store.factors.get(first.id) == first


def test_a_user_without_a_display_name_is_shown_by_username(
        runtime: Runtime, accounts: Accounts) -> None:
    bob = build.user("bob", created=runtime.now())
    runtime.store.users.add(bob)
    options, _ = accounts.begin_passkey(session(runtime, bob, Level.AAL1), bob)
    assert json.loads(options)["user"]["displayName"] == "bob"


def test_a_passkey_enrolment_is_finished_once_by_the_session_that_began_it(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine, other = session(runtime, alice), session(runtime, alice)
    authenticator = SoftAuthenticator(origin=ORIGIN)
    options, enrolment_id = accounts.begin_passkey(mine, alice)
    answer = authenticator.create(options)
    for who, what in ((other, enrolment_id), (mine, enrolment_id), (mine, "no-such-id")):
        with pytest.raises(VerificationFailed) as caught:
            accounts.finish_passkey(who, what, answer, "key")
        assert str(caught.value) == "Start adding the passkey again."
    options, enrolment_id = accounts.begin_passkey(mine, alice)
    answer = authenticator.create(options)
    accounts.finish_passkey(mine, enrolment_id, answer, "key")
    with pytest.raises(VerificationFailed) as caught:
        accounts.finish_passkey(mine, enrolment_id, answer, "key")
    assert str(caught.value) == "Start adding the passkey again."
    assert len(runtime.store.factors.for_user(alice.id)) == 1


def test_a_passkey_needs_user_verification(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine = session(runtime, alice, Level.AAL1)
    options, enrolment_id = accounts.begin_passkey(mine, alice)
    answer = SoftAuthenticator(origin=ORIGIN).create(options, uv=False)
    with pytest.raises(VerificationFailed):
        accounts.finish_passkey(mine, enrolment_id, answer, "key")
    assert runtime.store.factors.for_user(alice.id) == ()


# ------------------------------------------------------------------ removing, regenerating


def test_remove_password_leaves_a_passkey_only_user(
        runtime: Runtime, accounts: Accounts) -> None:
    carol = build.user("carol", password_hash="$argon2id$stand-in", created=runtime.now())
    runtime.store.users.add(carol)
    passkey(runtime, carol)
    mine, other = session(runtime, carol), session(runtime, carol)
    assert accounts.remove_password(mine) is True
    stored = runtime.store.users.get(carol.id)
    assert stored is not None and stored.password_hash == ""
    changed(runtime, mine, other, "password", "removed")


def test_remove_password_needs_a_passkey_not_just_any_factor(
        runtime: Runtime, accounts: Accounts) -> None:
    carol = build.user("carol", password_hash="$argon2id$stand-in", created=runtime.now())
    runtime.store.users.add(carol)
    totp(runtime, carol)
    with pytest.raises(VerificationFailed) as caught:
        accounts.remove_password(session(runtime, carol))
    assert str(caught.value) == "Add a passkey first: it is how you will sign in."
    assert runtime.store.users.get(carol.id) == carol
    assert enrolment_entries(runtime) == []


def test_new_recovery_codes_replace_the_old_ones(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    runtime.store.factors.replace_recovery_codes(alice.id, ["a" * 64], now=runtime.now() - 9)
    mine, other = session(runtime, alice, Level.AAL1), session(runtime, alice, Level.AAL1)
    codes = accounts.regenerate_recovery_codes(mine)
    stored = runtime.store.factors.recovery_codes(alice.id)
    assert sorted(c.code_hash for c in stored) == sorted(hash_recovery_code(c) for c in codes)
    assert len(codes) >= 8 and {c.created for c in stored} == {runtime.now()}
    changed(runtime, mine, other, "recovery", "regenerated")


def test_remove_factor_removes_only_this_users_factor(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    bob = build.user("bob", created=runtime.now())
    runtime.store.users.add(bob)
    bobs, kept, gone = totp(runtime, bob), totp(runtime, alice), totp(runtime, alice)
    mine, other = session(runtime, alice), session(runtime, alice)
    assert accounts.remove_factor(mine, bobs.id) is False
    assert accounts.remove_factor(mine, "no-such-factor") is False
    assert runtime.store.factors.get(bobs.id) == bobs
    assert runtime.store.sessions.get(other.id) is not None and enrolment_entries(runtime) == []
    assert accounts.remove_factor(mine, gone.id) is True
    assert runtime.store.factors.for_user(alice.id) == (kept,)
    changed(runtime, mine, other, "factor", "removed")

