"""More StepUp rules on the in-memory store: refusal texts and codes, what a failure or a pass
audits and counts, which TOTP app or passkey counts, what a ceremony stores, which factor levels
a factor reaches, and the push rules left by `make mutate` on `service/stepup.py`."""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stepguard.core.decision import Requirement
from stepguard.core.errors import ReplayDetected, VerificationFailed
from stepguard.core.levels import Level
from stepguard.core.throttle import trusted_entry, user_device_key, user_factor_key, user_ip_key
from stepguard.factors.webauthn import user_handle
from stepguard.service.accounts import Accounts
from stepguard.service.stepup import ChallengeGone, HeldRequest, reaches
from tests.contract import build
from tests.support.soft_authenticator import SoftCredential
from tests.unit import test_stepup_push
from tests.unit.test_stepup_push import LAPTOP_IP, Key, World, entries, make_world
from tests.unit.test_stepup_rules import (
    authenticator_for,
    challenge_now,
    code_now,
    throttle_count,
    with_passkey,
    with_totp,
)
from tests.unit.test_stepup_start import CONTEXT, DECISION

world = test_stepup_push.world  # Alice, her push device, laptop and phone (a fixture)

AAL3 = replace(DECISION, requirement=Requirement(level=Level.AAL3, scope="pay", single_use=True))
WRONG = "000000"


def wrong_code(world: World, secret: str) -> str:
    return "000001" if code_now(world, secret) == WRONG else WRONG


# ------------------------------------------------------------------ levels and methods


def test_a_syncable_passkey_reaches_aal2_only_and_other_factors_their_own_level() -> None:
    synced = build.factor("u", "webauthn", created=0.0, data={"backup_eligible": True})
    bound = build.factor("u", "webauthn", created=0.0, data={"backup_eligible": False})
    password = build.factor("u", "password", created=0.0, data={"backup_eligible": True})
    assert (reaches(synced, Level.AAL2), reaches(synced, Level.AAL3)) == (True, False)
    assert reaches(bound, Level.AAL3) is True
    assert (reaches(password, Level.AAL1), reaches(password, Level.AAL2)) == (True, False)


def test_a_factor_added_at_the_challenges_instant_is_not_offered(world: World) -> None:
    challenge = challenge_now(world)
    world.rt.store.factors.add(build.factor(world.user_id, "totp", created=challenge.created))
    assert world.stepup.methods_for(challenge, world.user_id) == ["push"]


def test_either_way_without_a_provider_offers_the_local_factors_only(world: World) -> None:
    either = replace(DECISION, requirement=Requirement(level=Level.AAL2, via="either"))
    challenge = challenge_now(world, either)
    assert world.stepup.methods_for(challenge, world.user_id) == ["push"]


# ------------------------------------------------------------------ challenges


def test_a_challenge_keeps_the_reason_texts_and_begin_keeps_the_held_request(
        world: World) -> None:
    texts = (("de", "Überweisung bestätigen"),)
    challenge = challenge_now(world, replace(DECISION, reason_texts=texts))
    assert challenge.reason_texts == texts
    stored = world.rt.store.challenges.get(challenge.id)
    assert stored is not None and stored.reason_texts == texts
    where = world.stepup.begin(DECISION, CONTEXT, world.laptop, return_url="/pay",
                               held=HeldRequest("POST", (("a", "b"),), b"amount=5"))
    begun = world.rt.store.challenges.get(where.removeprefix("/step-up/"))
    assert begun is not None and (begun.held_headers, begun.held_body) == (
        (("a", "b"),), b"amount=5")


def test_a_sign_in_challenge_is_audited_without_a_session(world: World) -> None:
    world.stepup.start(replace(DECISION, login=True), CONTEXT, None, return_url="/")
    entry = entries(world)[-1]
    assert (entry.outcome, entry.subject, entry.session) == ("started", "", "")


def test_an_expired_challenge_is_refused_with_its_own_text(world: World) -> None:
    world.clock.advance(301)
    with pytest.raises(ChallengeGone) as refused:
        world.stepup.live(world.challenge_id, world.laptop)
    assert str(refused.value) == "This request for confirmation has expired. Please start again."


def test_a_challenge_passed_meanwhile_is_refused_as_already_used(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = with_totp(world)
    challenge = challenge_now(world)
    monkeypatch.setattr(world.rt.store.challenges, "mark_passed", lambda *a, **k: False)
    with pytest.raises(ChallengeGone) as refused:
        world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                                 client_ip=LAPTOP_IP)
    assert str(refused.value) == "This confirmation was already used."


# ------------------------------------------------------------------ TOTP


def test_a_wrong_code_is_refused_counted_on_the_challenge_and_audited_for_the_session(
        world: World) -> None:
    secret = with_totp(world)
    challenge = challenge_now(world)
    with pytest.raises(VerificationFailed) as refused:
        world.stepup.verify_totp(challenge.id, world.laptop, wrong_code(world, secret),
                                 client_ip=LAPTOP_IP)
    assert str(refused.value) == "That code is not right. Check your authenticator app's clock."
    stored = world.rt.store.challenges.get(challenge.id)
    assert stored is not None and stored.attempts == 1
    entry = entries(world)[-1]
    started = entries(world)[0]
    assert (entry.kind, entry.subject, entry.session, entry.factor, entry.outcome,
            entry.rule, entry.detail) == (
        "verification", world.user_id, started.session, "totp", "failed:invalid",
        "large-transfer", {"challenge": challenge.id})
    assert started.session.startswith("s:")


def test_a_wrong_code_from_a_trusted_browser_is_counted_under_that_browsers_key(
        world: World) -> None:
    world.rt.store.history.record_trusted(world.user_id,
                                          entries=[trusted_entry("totp", "device", "laptop")])
    secret = with_totp(world)
    challenge = challenge_now(world)
    with pytest.raises(VerificationFailed):
        world.stepup.verify_totp(challenge.id, world.laptop, wrong_code(world, secret),
                                 client_ip=LAPTOP_IP)
    assert throttle_count(world, user_device_key(world.user_id, "totp", "laptop")) == 1
    assert throttle_count(world, user_factor_key(world.user_id, "totp")) == 1
    assert throttle_count(world, user_ip_key(world.user_id, "totp", LAPTOP_IP)) == 0


def test_the_code_of_any_of_two_apps_passes_and_marks_that_app_used(world: World) -> None:
    secrets_ = [with_totp(world), with_totp(world)]
    for secret in secrets_:
        challenge = challenge_now(world)
        world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                                 client_ip=LAPTOP_IP)
        world.clock.advance(30)
    apps = world.rt.store.factors.for_user(world.user_id, kind="totp")
    assert sorted(f.last_used for f in apps) == [world.clock.now - 60, world.clock.now - 30]


def test_a_code_used_once_is_refused_as_a_replay_by_the_app_check(world: World) -> None:
    secret = with_totp(world)
    code = code_now(world, secret)
    world.stepup.verify_totp(challenge_now(world).id, world.laptop, code, client_ip=LAPTOP_IP)
    with pytest.raises(ReplayDetected) as refused:
        world.stepup.verify_totp(challenge_now(world).id, world.laptop, code,
                                 client_ip=LAPTOP_IP)
    assert str(refused.value) != str(ReplayDetected())


def test_an_app_still_being_set_up_does_not_pass(world: World) -> None:
    with_totp(world)
    user = world.rt.store.users.get(world.user_id)
    assert user is not None
    unconfirmed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    Accounts(world.rt)._store_totp(user, unconfirmed, label="new", created=world.clock.now - 1,
                                   confirmed=False)
    challenge = challenge_now(world)
    with pytest.raises(VerificationFailed):
        world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, unconfirmed),
                                 client_ip=LAPTOP_IP)


def test_a_pass_audits_the_session_and_the_challenges_reasons(world: World) -> None:
    secret = with_totp(world)
    challenge = challenge_now(world)
    world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                             client_ip=LAPTOP_IP)
    entry = entries(world)[-1]
    assert (entry.outcome, entry.session, entry.reasons) == (
        "passed", entries(world)[0].session, ("Approve 5000 to Bob",))
    assert entry.session.startswith("s:")


# ------------------------------------------------------------------ passkeys


def test_a_passkey_ceremony_requires_user_verification(world: World) -> None:
    with_passkey(world, authenticator_for(world), created=world.clock.now - 60)
    challenge = challenge_now(world)
    world.stepup.begin_webauthn(challenge.id, world.laptop)
    stored = world.rt.store.challenges.get(challenge.id)
    assert stored is not None and stored.ceremony is not None
    assert stored.ceremony["webauthn"]["require_uv"] is True


def test_a_passkey_pass_is_audited_and_granted_as_webauthn(world: World) -> None:
    authenticator = authenticator_for(world)
    with_passkey(world, authenticator, created=world.clock.now - 60)
    challenge = challenge_now(world)
    options = world.stepup.begin_webauthn(challenge.id, world.laptop)
    passed = world.stepup.finish_webauthn(challenge.id, world.laptop, authenticator.get(options),
                                          client_ip=LAPTOP_IP)
    assert passed.grant is not None and passed.grant.factor == "webauthn"
    assert (entries(world)[-1].factor, entries(world)[-1].outcome) == ("webauthn", "passed")


def test_a_passkey_answer_without_a_ceremony_is_refused_as_used_or_expired(
        world: World) -> None:
    authenticator = authenticator_for(world)
    with_passkey(world, authenticator, created=world.clock.now - 60)
    challenge = challenge_now(world)
    options = world.stepup.begin_webauthn(challenge.id, world.laptop)
    answer = authenticator.get(options)
    world.rt.store.challenges.take_ceremony(challenge.id, now=world.clock.now)
    with pytest.raises(ReplayDetected) as refused:
        world.stepup.finish_webauthn(challenge.id, world.laptop, answer, client_ip=LAPTOP_IP)
    assert str(refused.value) == "This passkey request was already used or has expired."


def test_an_unknown_passkey_is_not_registered_to_your_account(world: World) -> None:
    authenticator = authenticator_for(world)
    with_passkey(world, authenticator, created=world.clock.now - 60)
    unknown = SoftCredential(secrets.token_bytes(32), ec.generate_private_key(ec.SECP256R1()),
                             world.rt.rp.id, user_handle(world.user_id))
    authenticator.credentials[unknown.credential_id] = unknown
    challenge = challenge_now(world)
    options = world.stepup.begin_webauthn(challenge.id, world.laptop)
    with pytest.raises(VerificationFailed) as refused:
        world.stepup.finish_webauthn(
            challenge.id, world.laptop,
            authenticator.get(options, credential_id=unknown.credential_id), client_ip=LAPTOP_IP)
    assert str(refused.value) == "This passkey is not registered to your account."


def test_a_passkey_answer_for_another_transaction_is_refused(world: World) -> None:
    authenticator = authenticator_for(world)
    with_passkey(world, authenticator, created=world.clock.now - 60)
    first = challenge_now(world)
    other = challenge_now(world, replace(DECISION, binding="cd" * 32))
    options = world.stepup.begin_webauthn(first.id, world.laptop)
    stored = world.rt.store.challenges.get(first.id)
    assert stored is not None and stored.ceremony is not None
    world.rt.store.challenges.set_ceremony(other.id, stored.ceremony, now=world.clock.now)
    with pytest.raises(VerificationFailed) as refused:
        world.stepup.finish_webauthn(other.id, world.laptop, authenticator.get(options),
                                     client_ip=LAPTOP_IP)
    assert refused.value.code == "wrong_binding"


def test_a_passkey_asserting_synced_cannot_confirm_an_aal3_request(world: World) -> None:
    authenticator = replace(authenticator_for(world), synced=True)
    with_passkey(world, authenticator, created=world.clock.now - 60)
    challenge = challenge_now(world, AAL3)
    options = world.stepup.begin_webauthn(challenge.id, world.laptop)
    with pytest.raises(VerificationFailed) as refused:
        world.stepup.finish_webauthn(challenge.id, world.laptop, authenticator.get(options),
                                     client_ip=LAPTOP_IP)
    assert refused.value.code == "synced_passkey"
    assert str(refused.value).startswith("This passkey is synced between devices")


# ------------------------------------------------------------------ push


def test_a_push_keeps_the_first_64_characters_of_the_client_address(world: World) -> None:
    push = world.stepup.start_push(world.challenge_id, world.laptop, client_ip="a" * 70,
                                   user_agent="Firefox")
    assert push.client_ip == "a" * 64
    entry = entries(world)[-1]
    assert entry.outcome == "push_sent" and entry.session.startswith("s:")


def test_a_push_for_a_gone_push_or_challenge_is_refused_with_its_text(world: World) -> None:
    push = world.send()
    with pytest.raises(ChallengeGone) as unknown:
        world.stepup.answer_push("nope", world.phone, picked=1, device_id=world.device.id,
                                 signature=b"", client_ip="192.0.2.9")
    assert str(unknown.value) == "This approval request is no longer pending."
    world.rt.store.challenges.mark_passed(world.challenge_id, now=world.clock.now)
    with pytest.raises(ChallengeGone) as passed:
        world.answer(push)
    assert str(passed.value) == "This approval request is no longer pending."


def test_an_answered_push_is_refused_by_the_push_check_and_a_lost_race_by_the_store(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    push = world.send()
    world.answer(push)
    answered = world.rt.store.pushes.get(push.id)
    assert answered is not None
    with pytest.raises(ReplayDetected) as again:
        world.answer(answered)
    assert str(again.value) == "this push was already answered"
    w = world
    second = replace(push, id=build.new_id())
    w.rt.store.pushes.add(second)
    w.clock.advance(5)
    monkeypatch.setattr(w.rt.store.pushes, "answer", lambda *a, **k: False)
    with pytest.raises(ReplayDetected) as lost:
        w.answer(second)
    assert str(lost.value) == "This approval request was already answered."


def test_an_unknown_device_is_refused_with_its_text(world: World) -> None:
    push = world.send()
    with pytest.raises(VerificationFailed) as refused:
        world.answer(push, device_id="nope")
    assert (str(refused.value), refused.value.code) == (
        "This browser is not a registered push device.", "unknown_device")


def test_a_badly_signed_answer_is_audited_as_a_failed_push_and_can_lock(tmp_path: Path) -> None:
    w = make_world(tmp_path, "throttle: {hard_lock_after: 1}\n")
    try:
        push = w.send()
        with pytest.raises(VerificationFailed):
            w.answer(push, key=Key())
        failed = [e for e in entries(w) if e.outcome.startswith("failed:")]
        assert [(e.factor, e.outcome, e.rule) for e in failed] == [
            ("push", "failed:bad_signature", "large-transfer")]
        assert failed[0].session.startswith("s:")
        [locked] = [e for e in entries(w) if e.outcome == "locked"]
        assert (locked.factor, locked.request.get("client_ip", "")) == ("push", "")
    finally:
        w.rt.close()


def test_pending_pushes_skip_the_sessions_own_push_and_list_the_others(world: World) -> None:
    push = world.send()
    world.clock.advance(1)
    own = replace(push, id=build.new_id(), requesting_session_id=world.phone.id,
                  created=world.clock.now)
    world.rt.store.pushes.add(own)
    assert [p.id for p, _ in world.stepup.pending_pushes(world.phone)] == [push.id]
