"""StepUp's rules that only the slow HTTP tests held before: what a pass stores (the session's
new event and token, the grant's scope, times and binding, the returned challenge), recovery
codes (each used once, its use dated), the push anti-bombing inputs (the user's recent starts,
only still-pending pushes), the push's audit session, where an IdP-linked user may step up,
pseudonymised addresses in the challenge entry, and the refusal of a method the challenge does
not offer. Found by `make mutate` on `service/stepup.py`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stepguard.audit.ledger import pseudonymise_ip
from stepguard.core.context import AuthEvent
from stepguard.core.decision import Requirement
from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.core.levels import Level
from stepguard.factors import push as push_factor
from stepguard.factors.recovery import generate_recovery_codes, hash_recovery_code
from stepguard.service.runtime import hash_token
from stepguard.service.stepup import PUSH_SETTINGS
from stepguard.storage.identity_records import IdentityRecord
from tests.unit import test_stepup_push
from tests.unit.test_stepup_push import LAPTOP_IP, World, entries, make_world
from tests.unit.test_stepup_rules import challenge_now, code_now, with_totp
from tests.unit.test_stepup_start import CONTEXT, DECISION

world = test_stepup_push.world  # Alice, her push device, laptop and phone (a fixture)

EITHER = ('oidc:\n  providers:\n    - {name: corp, issuer: "https://idp.example", '
          'client_id: stepguard, step_up: either}\n')


def with_recovery_codes(world: World) -> list[str]:
    codes = generate_recovery_codes()
    world.rt.store.factors.replace_recovery_codes(
        world.user_id, [hash_recovery_code(c) for c in codes], now=world.clock.now - 60)
    return codes


def link_to_corp(world: World) -> None:
    world.rt.store.identities.link(IdentityRecord(
        issuer="https://idp.example", subject="a-1", user_id=world.user_id, provider="corp",
        created=world.clock.now, last_login=world.clock.now))


@pytest.fixture
def either_world(tmp_path: Path) -> Iterator[World]:
    """The world with one identity provider whose users may step up there or locally."""
    made = make_world(tmp_path, EITHER)
    yield made
    made.rt.close()


# ------------------------------------------------------------------ what a pass stores


def pass_with_totp(world: World) -> tuple[Any, Any]:
    """A challenge started now and passed with a TOTP code 7 s later: (challenge, the pass)."""
    secret = with_totp(world)
    challenge = challenge_now(world)
    world.clock.advance(7)
    return challenge, world.stepup.verify_totp(challenge.id, world.laptop,
                                               code_now(world, secret), client_ip=LAPTOP_IP)


def test_a_pass_adds_the_factors_event_to_the_session_and_rotates_its_token(
        world: World) -> None:
    challenge, passed = pass_with_totp(world)
    now = world.clock.now
    stored = world.rt.store.sessions.get(world.laptop.id)
    assert stored is not None
    assert stored.events[-1] == AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2, at=now)
    assert stored.token_hash == hash_token(passed.token) != world.laptop.token_hash
    assert stored.last_seen == now
    assert passed.challenge.id == challenge.id and passed.challenge.return_url == "/pay"


def test_the_grant_of_a_pass_is_for_the_challenges_scope_and_binding_from_the_proof_on(
        world: World) -> None:
    challenge, passed = pass_with_totp(world)
    now, ttl = world.clock.now, world.rt.config.challenge.grant_ttl
    grant = passed.grant
    assert grant is not None
    assert (grant.subject_id, grant.session_id, grant.scope, grant.binding) == (
        world.user_id, world.laptop.id, "pay", "ab" * 32)
    assert (grant.level, grant.amr, grant.factor, grant.single_use) == (
        Level.AAL2, ("otp",), "totp", True)
    assert (grant.granted_at, grant.expires_at) == (now, now + ttl)
    assert world.rt.store.grants.get(grant.id).grant == grant  # type: ignore[union-attr]


def test_a_rules_max_age_is_the_lifetime_of_its_grant(world: World) -> None:
    secret = with_totp(world)
    requirement = Requirement(level=Level.AAL2, scope="pay", single_use=True, max_age=90.0)
    challenge = challenge_now(world, replace(DECISION, requirement=requirement))
    passed = world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                                      client_ip=LAPTOP_IP)
    assert passed.grant is not None
    assert passed.grant.expires_at == world.clock.now + 90.0


# ------------------------------------------------------------------ recovery codes


def test_a_recovery_code_passes_once_and_its_use_is_dated(world: World) -> None:
    codes = with_recovery_codes(world)
    challenge = challenge_now(world)
    world.clock.advance(3)
    passed = world.stepup.verify_recovery(challenge.id, world.laptop, codes[1],
                                          client_ip=LAPTOP_IP)
    assert passed.grant is not None and passed.grant.factor == "recovery"
    used = {c.code_hash: c.used_at for c in world.rt.store.factors.recovery_codes(world.user_id)}
    assert used[hash_recovery_code(codes[1])] == world.clock.now
    assert sum(at is not None for at in used.values()) == 1
    entry = entries(world)[-1]
    assert (entry.factor, entry.outcome) == ("recovery", "passed")
    again = challenge_now(world)
    world.clock.advance(60)
    with pytest.raises(VerificationFailed):
        world.stepup.verify_recovery(again.id, world.laptop, codes[1], client_ip=LAPTOP_IP)
    assert entries(world)[-1].outcome.startswith("failed:")


def test_another_unused_recovery_code_still_passes_after_one_was_used(world: World) -> None:
    codes = with_recovery_codes(world)
    first = challenge_now(world)
    world.stepup.verify_recovery(first.id, world.laptop, codes[0], client_ip=LAPTOP_IP)
    second = challenge_now(world)
    passed = world.stepup.verify_recovery(second.id, world.laptop, codes[2],
                                          client_ip=LAPTOP_IP)
    assert passed.challenge.id == second.id


def test_a_method_the_challenge_does_not_offer_is_refused_by_name(world: World) -> None:
    challenge = challenge_now(world)  # Alice has a push device only: no recovery codes
    with pytest.raises(VerificationFailed) as refused:
        world.stepup.verify_recovery(challenge.id, world.laptop, "x", client_ip=LAPTOP_IP)
    assert str(refused.value) == "recovery cannot be used for this request."


# ------------------------------------------------------------------ push anti-bombing


def test_an_answered_push_does_not_block_the_next_after_the_minimum_interval(
        world: World) -> None:
    """Only pushes still waiting count as open: a refused one frees the way once the minimum
    interval is over, long before it would have expired."""
    first = world.send()
    assert world.answer(first, push_factor.REFUSE) == "denied"
    world.clock.advance(PUSH_SETTINGS.min_interval + 1)
    assert PUSH_SETTINGS.min_interval + 1 < PUSH_SETTINGS.expiry
    second = world.send()
    assert second.id != first.id and second.status == "pending"


def test_a_push_within_the_minimum_interval_of_the_last_is_throttled_even_once_answered(
        world: World) -> None:
    first = world.send()
    assert world.answer(first, push_factor.REFUSE) == "denied"
    world.clock.advance(PUSH_SETTINGS.min_interval - 5)
    with pytest.raises(Throttled) as throttled:
        world.send()
    assert throttled.value.retry_after == pytest.approx(5.0)


def test_the_push_sent_entry_names_the_requesting_session(world: World) -> None:
    world.send()
    entry = entries(world)[-1]
    assert entry.outcome == "push_sent"
    assert entry.session == world.rt.session_ref(world.laptop.id) != ""


# ------------------------------------------------------------------ where to step up


def test_a_provider_allowing_either_offers_local_methods_and_the_provider(
        either_world: World) -> None:
    w = either_world
    link_to_corp(w)
    challenge = challenge_now(w)
    assert w.stepup.via(challenge, w.user_id) == ("either", "corp")
    assert w.stepup.methods_for(challenge, w.user_id) == ["push", "idp"]


def test_a_rule_asking_a_local_step_up_never_offers_the_linked_provider(
        either_world: World) -> None:
    w = either_world
    link_to_corp(w)
    local = replace(DECISION, requirement=Requirement(level=Level.AAL2, scope="pay",
                                                      single_use=True, via="local"))
    challenge = challenge_now(w, local)
    assert w.stepup.via(challenge, w.user_id) == ("local", "corp")
    assert w.stepup.methods_for(challenge, w.user_id) == ["push"]


# ------------------------------------------------------------------ starting


def test_begin_stores_the_challenge_for_the_asking_session(world: World) -> None:
    location = world.stepup.begin(DECISION, CONTEXT, world.laptop, return_url="/x")
    challenge = world.rt.store.challenges.get(location.removeprefix("/step-up/"))
    assert challenge is not None
    assert (challenge.user_id, challenge.session_id) == (world.user_id, world.laptop.id)


def test_the_challenge_entry_keeps_only_the_pseudonymised_address(world: World) -> None:
    world.rt.ip_key = b"k" * 32
    world.stepup.start(DECISION, CONTEXT, world.laptop, return_url="/pay")
    entry = entries(world)[-1]
    assert entry.kind == "challenge"
    assert entry.request["client_ip"] == pseudonymise_ip(CONTEXT.client_ip, key=b"k" * 32)

