"""StepUp's rules on the in-memory store beyond starting a challenge and the push flow: which
methods a challenge offers (unconfirmed factors, identity providers), TOTP and passkey
verification (which passkey counts, the level a synced one proves, what is stored), what a pass
writes (grant or none, the agent's grant, cleared failures, trusted clients, the audit entry),
how failures and push answers are counted and audited, and the exact refusal texts. Found by
`make mutate` on `service/stepup.py`."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stepguard.core.decision import Decision, Requirement
from stepguard.core.errors import ReplayDetected, Throttled, VerificationFailed
from stepguard.core.levels import Level
from stepguard.core.throttle import (
    client_network,
    trusted_entry,
    user_device_key,
    user_factor_key,
    user_ip_key,
)
from stepguard.factors import push as push_factor
from stepguard.factors.totp import totp_at
from stepguard.factors.webauthn import user_handle
from stepguard.service.accounts import Accounts
from stepguard.service.stepup import (
    AGENT_CALL,
    PUSH_SETTINGS,
    ChallengeGone,
    HeldRequest,
    Passed,
    ceremony_from,
)
from stepguard.storage.identity_records import IdentityRecord
from stepguard.storage.records import ChallengeRecord, FactorRecord
from tests.contract import build
from tests.support.soft_authenticator import SoftAuthenticator, SoftCredential, b64url
from tests.unit import test_stepup_push
from tests.unit.test_stepup_push import LAPTOP_IP, Key, World, entries, make_world
from tests.unit.test_stepup_start import CONTEXT, DECISION

world = test_stepup_push.world  # Alice, her push device, laptop and phone (a fixture)

PROVIDER = ('oidc:\n  providers:\n    - {name: corp, issuer: "https://idp.example", '
            'client_id: stepguard, step_up: idp}\n')
NO_GRANT = replace(DECISION, requirement=Requirement(level=Level.AAL2), scope="", binding="",
                   bound_values=())


def challenge_now(world: World, decision: Decision = DECISION,
                  held: HeldRequest | None = None) -> ChallengeRecord:
    """A challenge of the laptop's started now (after every factor of the world)."""
    return world.stepup.start(decision, CONTEXT, world.laptop, return_url="/pay", held=held)


def with_totp(world: World) -> str:
    """A confirmed authenticator app of Alice's, enrolled a second ago; its secret."""
    user = world.rt.store.users.get(world.user_id)
    assert user is not None
    secret = pyotp.random_base32(32)
    Accounts(world.rt).add_totp_secret(user, secret)
    return secret


def code_now(world: World, secret: str) -> str:
    return totp_at(secret=secret, step=int(world.clock.now // 30))


def with_passkey(world: World, authenticator: SoftAuthenticator, *, created: float,
                 synced: bool = False) -> FactorRecord:
    """A passkey of Alice's held by `authenticator`, registered at `created` (as syncable when
    `synced`: its assertions may still look device-bound)."""
    credential = SoftCredential(secrets.token_bytes(32), ec.generate_private_key(ec.SECP256R1()),
                                world.rt.rp.id, user_handle(world.user_id))
    authenticator.credentials[credential.credential_id] = credential
    factor = build.factor(world.user_id, "webauthn", created=created,
                          credential_id=credential.credential_id,
                          public_key=credential.cose_public_key(), sign_count=0,
                          data={"backup_eligible": synced})
    world.rt.store.factors.add(factor)
    return factor


def authenticator_for(world: World) -> SoftAuthenticator:
    return SoftAuthenticator(origin=world.rt.rp.origins[0])


def throttle_count(world: World, key: str) -> int:
    return world.rt.store.throttle.state(key, now=world.clock.now).consecutive


@pytest.fixture
def provider_world(tmp_path: Path) -> Iterator[World]:
    """The same world with one identity provider whose users step up there."""
    made = make_world(tmp_path, PROVIDER)
    yield made
    made.rt.close()


# ------------------------------------------------------------------ challenges and methods


def test_a_sign_in_decision_makes_a_sign_in_challenge(world: World) -> None:
    challenge = world.stepup.start(replace(DECISION, login=True), CONTEXT, None, return_url="/")
    assert challenge.login is True
    assert world.rt.store.challenges.get(challenge.id).login is True  # type: ignore[union-attr]


def test_another_sessions_challenge_is_refused_with_its_own_text(world: World) -> None:
    with pytest.raises(ChallengeGone) as refused:
        world.stepup.live(world.challenge_id, world.phone)
    assert str(refused.value) == "This confirmation belongs to another session."


def test_a_factor_still_being_set_up_is_not_offered(world: World) -> None:
    world.rt.store.factors.add(build.factor(world.user_id, "totp", created=world.clock.now - 60,
                                            data={"confirmed": False}))
    challenge = challenge_now(world)
    assert world.stepup.methods_for(challenge, world.user_id) == ["push"]
    world.rt.store.factors.add(build.factor(world.user_id, "totp", created=world.clock.now - 60,
                                            data={"confirmed": True}))
    assert world.stepup.methods_for(challenge, world.user_id) == ["totp", "push"]


def test_without_identity_providers_every_step_up_is_local(world: World) -> None:
    challenge = challenge_now(world)
    assert world.stepup.via(challenge, world.user_id) == ("local", "")


def test_a_local_user_steps_up_locally_and_a_linked_one_at_the_provider(
        provider_world: World) -> None:
    w = provider_world
    challenge = challenge_now(w)
    assert w.stepup.via(challenge, w.user_id) == ("local", "")
    assert w.stepup.methods_for(challenge, w.user_id) == ["push"]
    w.rt.store.identities.link(IdentityRecord(
        issuer="https://idp.example", subject="a-1", user_id=w.user_id, provider="corp",
        created=w.clock.now, last_login=w.clock.now))
    assert w.stepup.via(challenge, w.user_id) == ("idp", "corp")
    assert w.stepup.methods_for(challenge, w.user_id) == ["idp"]


# ------------------------------------------------------------------ TOTP and what a pass writes


@pytest.mark.parametrize("client_ip", [LAPTOP_IP, ""])
def test_a_right_code_passes_trusts_the_client_and_audits_only_that_an_address_was_there(
        world: World, client_ip: str) -> None:
    secret = with_totp(world)
    challenge = challenge_now(world)
    passed = world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                                      client_ip=client_ip)
    assert passed.grant is not None and passed.grant.factor == "totp"
    entry = entries(world)[-1]
    assert (entry.kind, entry.subject, entry.factor, entry.outcome, entry.rule) == (
        "verification", world.user_id, "totp", "passed", "large-transfer")
    assert entry.detail == {"challenge": challenge.id, "grant": passed.grant.id,
                            "level": "aal2", "ip": "present" if client_ip else ""}
    trusted = world.rt.store.history.load(world.user_id).trusted
    assert trusted_entry("totp", "device", "laptop") in trusted
    net = trusted_entry("totp", "net", client_network(LAPTOP_IP))
    assert (net in trusted) is bool(client_ip)


def test_a_throttle_refusal_met_during_verification_is_audited_as_throttled(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever refuses with `Throttled` after the attempt was reserved (a store's own limit)
    is audited as `failed:throttled`, like a wrong code under its own code."""
    secret = with_totp(world)
    challenge = challenge_now(world)

    def throttled(*args: object, **kwargs: object) -> int:
        raise Throttled(5.0)

    monkeypatch.setattr(world.rt.store.challenges, "record_attempt", throttled)
    with pytest.raises(Throttled):
        world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                                 client_ip=LAPTOP_IP)
    entry = entries(world)[-1]
    assert (entry.factor, entry.outcome, entry.detail) == (
        "totp", "failed:throttled", {"challenge": challenge.id})


def test_a_rule_asking_no_grant_is_passed_without_one(world: World) -> None:
    secret = with_totp(world)
    challenge = challenge_now(world, NO_GRANT)
    passed = world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                                      client_ip=LAPTOP_IP)
    assert passed.grant is None
    assert entries(world)[-1].detail["grant"] == ""


def test_an_agents_call_earns_a_single_use_grant_for_the_agents_session(world: World) -> None:
    """Even under a rule asking no grant: the human answers from the phone, the grant goes to
    the session holding the call (here the laptop's)."""
    secret = with_totp(world)
    challenge = challenge_now(world, NO_GRANT, HeldRequest(AGENT_CALL))
    passed = world.stepup.verify_totp(challenge.id, world.phone, code_now(world, secret),
                                      client_ip=LAPTOP_IP)
    assert passed.grant is not None
    assert (passed.grant.session_id, passed.grant.subject_id, passed.grant.single_use) == (
        world.laptop.id, world.user_id, True)


# ------------------------------------------------------------------ passkeys


def test_a_device_bound_passkey_passes_at_aal3_and_its_counter_and_use_are_saved(
        world: World) -> None:
    authenticator = authenticator_for(world)
    passkey = with_passkey(world, authenticator, created=world.clock.now - 60)
    challenge = challenge_now(world)
    options = world.stepup.begin_webauthn(challenge.id, world.laptop)
    assert [c["id"] for c in json.loads(options)["allowCredentials"]] == [
        b64url(passkey.credential_id)]
    world.clock.advance(5)
    passed = world.stepup.finish_webauthn(challenge.id, world.laptop, authenticator.get(options),
                                          client_ip=LAPTOP_IP)
    assert passed.grant is not None
    assert (passed.grant.level, passed.grant.amr) == (Level.AAL3, ("hwk", "user"))
    stored = world.rt.store.factors.get(passkey.id)
    assert stored is not None and (stored.sign_count, stored.last_used) == (1, world.clock.now)


def test_a_passkey_registered_as_syncable_proves_aal2_even_when_it_asserts_device_bound(
        world: World) -> None:
    authenticator = authenticator_for(world)  # its assertions carry no backup flags
    with_passkey(world, authenticator, created=world.clock.now - 60, synced=True)
    challenge = challenge_now(world)
    options = world.stepup.begin_webauthn(challenge.id, world.laptop)
    passed = world.stepup.finish_webauthn(challenge.id, world.laptop, authenticator.get(options),
                                          client_ip=LAPTOP_IP)
    assert passed.grant is not None
    assert (passed.grant.level, passed.grant.amr) == (Level.AAL2, ("swk", "user"))


def test_a_passkey_registered_at_the_challenges_instant_is_not_registered_for_it(
        world: World) -> None:
    authenticator = authenticator_for(world)
    earlier = with_passkey(world, authenticator, created=world.clock.now - 60)
    challenge = challenge_now(world)
    late = with_passkey(world, authenticator, created=challenge.created)
    options = world.stepup.begin_webauthn(challenge.id, world.laptop)
    assert [c["id"] for c in json.loads(options)["allowCredentials"]] == [
        b64url(earlier.credential_id)]
    with pytest.raises(VerificationFailed) as refused:
        answer = authenticator.get(options, credential_id=late.credential_id)
        world.stepup.finish_webauthn(challenge.id, world.laptop, answer, client_ip=LAPTOP_IP)
    assert (str(refused.value), refused.value.code) == (
        "This passkey is not registered to your account.", "invalid")
    assert entries(world)[-1].outcome == "failed:invalid"


def test_a_ceremony_without_a_passkey_request_is_refused_as_none_pending() -> None:
    with pytest.raises(ReplayDetected) as refused:
        ceremony_from({"other": {}})
    assert str(refused.value) == "No passkey request is pending."


# ------------------------------------------------------------------ push


def test_a_push_still_waiting_blocks_the_next_even_after_the_interval(world: World) -> None:
    world.send()
    world.clock.advance(PUSH_SETTINGS.min_interval + 1)
    with pytest.raises(Throttled):
        world.send()


def test_a_push_is_no_longer_offered_once_its_challenge_expires(world: World) -> None:
    first = world.rt.store.challenges.get(world.challenge_id)
    assert first is not None
    short = replace(first, id=build.new_id(), expires=world.clock.now + 60)
    world.rt.store.challenges.add(short)
    push = world.stepup.start_push(short.id, world.laptop, client_ip=LAPTOP_IP,
                                   user_agent="Firefox")
    assert push.expires > short.expires
    world.clock.now = short.expires - 0.5
    assert [(p.id, c.id) for p, c in world.stepup.pending_pushes(world.phone)] == [
        (push.id, short.id)]
    world.clock.now = short.expires
    assert world.stepup.pending_pushes(world.phone) == []


def test_an_approval_is_audited_as_the_users_push(world: World) -> None:
    push = world.send()
    assert world.answer(push) == "approved"
    entry = entries(world)[-1]
    assert (entry.kind, entry.subject, entry.factor, entry.outcome) == (
        "verification", world.user_id, "push", "approved")


def test_a_refusal_reaching_the_hard_lock_is_audited_as_a_push_lockout(tmp_path: Path) -> None:
    w = make_world(tmp_path, "throttle: {hard_lock_after: 1}\n")
    try:
        assert w.answer(w.send(), push_factor.REFUSE) == "denied"
        [locked] = [e for e in entries(w) if e.outcome == "locked"]
        assert (locked.subject, locked.factor, locked.detail) == (
            w.user_id, "push", {"after_failures": 1})
    finally:
        w.rt.close()


def test_a_device_enrolled_at_the_challenges_instant_cannot_approve_it(world: World) -> None:
    push = world.send()
    challenge = world.rt.store.challenges.get(world.challenge_id)
    assert challenge is not None
    late = build.factor(world.user_id, "push", created=challenge.created,
                        public_key=world.key.spki, data={"alg": "ES256"})
    world.rt.store.factors.add(late)
    with pytest.raises(VerificationFailed) as refused:
        world.answer(push, device_id=late.id)
    assert (str(refused.value), refused.value.code) == (
        "A device added after the request cannot approve it.", "new_device")


def test_an_answer_from_a_trusted_browser_is_counted_under_that_browsers_key(
        world: World) -> None:
    world.rt.store.history.record_trusted(world.user_id,
                                          entries=[trusted_entry("push", "device", "phone")])
    push = world.send()
    with pytest.raises(VerificationFailed):
        world.answer(push, key=Key())  # signed by another key
    assert throttle_count(world, user_device_key(world.user_id, "push", "phone")) == 1
    assert throttle_count(world, user_factor_key(world.user_id, "push")) == 1
    assert throttle_count(world, user_ip_key(world.user_id, "push", "192.0.2.9")) == 0


def test_passing_with_a_push_clears_the_push_failures_made_since_the_approval(
        world: World) -> None:
    push = world.send()
    assert world.answer(push) == "approved"
    with pytest.raises(VerificationFailed):
        world.answer(push)  # answered already: a failure, counted
    key = user_factor_key(world.user_id, "push")
    assert throttle_count(world, key) == 1
    passed = world.stepup.poll_push(world.challenge_id, world.laptop, client_ip=LAPTOP_IP)
    assert isinstance(passed, Passed)
    assert throttle_count(world, key) == 0
