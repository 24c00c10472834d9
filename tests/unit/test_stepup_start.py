"""StepUp.start / location / live on the in-memory store: what a challenge keeps of the decision
and the request, where the user is sent, and which challenge a session may answer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.context import RequestContext
from stepguard.core.decision import Decision, Outcome, Requirement
from stepguard.core.errors import VerificationFailed
from stepguard.core.levels import Level
from stepguard.factors.recovery import generate_recovery_codes, hash_recovery_code
from stepguard.service.runtime import build_runtime
from stepguard.service.stepup import ChallengeGone, HeldRequest, HeldTooLarge, StepUp
from stepguard.storage.memory import MemoryStore
from tests.contract import build
from tests.support.gateway import Clock, write_config
from tests.unit import test_stepup_push
from tests.unit.test_stepup_push import World, entries

world = test_stepup_push.world  # the same in-memory world (a fixture)

CONTEXT = RequestContext(method="POST", host="app.test", path="/transfers",
                         client_ip="198.51.100.23", user_agent="Firefox")
DECISION = Decision(
    outcome=Outcome.STEP_UP, rule="large-transfer", reasons=("Approve 5000 to Bob",),
    requirement=Requirement(level=Level.AAL2, scope="pay", single_use=True),
    scope="pay", binding="ab" * 32, bound_values=(("amount", "5000"),))


def test_a_challenge_keeps_the_decision_the_request_and_the_session(world: World) -> None:
    held = HeldRequest("POST", (("content-type", "text/plain"),), b"amount=5000")
    challenge = world.stepup.start(DECISION, CONTEXT, world.laptop, return_url="/pay", held=held)
    assert world.rt.store.challenges.get(challenge.id) == challenge
    assert (challenge.user_id, challenge.session_id) == (world.user_id, world.laptop.id)
    assert (challenge.requirement, challenge.reasons, challenge.rule, challenge.login) == (
        DECISION.requirement, DECISION.reasons, "large-transfer", False)
    assert (challenge.scope, challenge.binding, challenge.bound_values) == (
        "pay", "ab" * 32, (("amount", "5000"),))
    assert (challenge.return_url, challenge.held_method, challenge.held_headers,
            challenge.held_body) == ("/pay", "POST", held.headers, b"amount=5000")
    assert challenge.created == world.clock.now
    assert challenge.expires == world.clock.now + world.rt.config.challenge.ttl
    assert challenge.status == "pending"
    entry = entries(world)[-1]
    assert (entry.kind, entry.subject, entry.decision, entry.outcome, entry.rule) == (
        "challenge", world.user_id, "step_up", "started", "large-transfer")
    assert entry.reasons == DECISION.reasons
    assert entry.session == world.rt.session_ref(world.laptop.id)
    assert entry.detail == {"challenge": challenge.id, "level": "aal2"}
    assert entry.request["path"] == "/transfers"


def test_without_a_held_request_the_challenge_holds_the_method_only(world: World) -> None:
    challenge = world.stepup.start(DECISION, CONTEXT, None, return_url="/pay")
    assert (challenge.user_id, challenge.session_id) == (None, None)
    assert (challenge.held_method, challenge.held_headers, challenge.held_body) == (
        "POST", (), b"")
    assert entries(world)[-1].subject == ""


def test_a_body_above_the_hold_limit_is_refused_and_at_the_limit_held(world: World) -> None:
    limit = world.stepup.hold_limit
    assert limit == min(world.rt.config.challenge.held_body_limit, limit)
    held = HeldRequest("POST", (), b"x" * limit)
    assert world.stepup.start(DECISION, CONTEXT, world.laptop, return_url="/",
                              held=held).held_body == held.body
    with pytest.raises(HeldTooLarge) as refused:
        world.stepup.start(DECISION, CONTEXT, world.laptop, return_url="/",
                           held=HeldRequest("POST", (), b"x" * (limit + 1)))
    assert refused.value.limit == limit
    assert str(limit) in str(refused.value)


def test_begin_sends_a_sign_in_to_the_login_page_with_the_return_url(world: World) -> None:
    assert world.stepup.begin(replace(DECISION, login=True), CONTEXT, world.laptop,
                                 return_url="https://app.test/a?b=1") \
        == "/login?rd=https%3A%2F%2Fapp.test%2Fa%3Fb%3D1"
    assert world.stepup.begin(DECISION, CONTEXT, None, return_url="/x") == "/login?rd=%2Fx"
    location = world.stepup.begin(DECISION, CONTEXT, world.laptop, return_url="/x")
    assert location.startswith("/step-up/")
    challenge = world.rt.store.challenges.get(location.removeprefix("/step-up/"))
    assert challenge is not None and challenge.return_url == "/x"


def test_a_challenge_is_live_until_it_expires_for_its_own_session_only(world: World) -> None:
    challenge = world.stepup.start(DECISION, CONTEXT, world.laptop, return_url="/")
    assert world.stepup.live(challenge.id, world.laptop) == challenge
    for other in (world.phone, None):
        with pytest.raises(ChallengeGone):
            world.stepup.live(challenge.id, other)
    with pytest.raises(ChallengeGone):
        world.stepup.live("missing", world.laptop)
    world.clock.now = challenge.expires - 0.5
    assert world.stepup.live(challenge.id, world.laptop) == challenge
    world.clock.now = challenge.expires
    with pytest.raises(ChallengeGone):
        world.stepup.live(challenge.id, world.laptop)


def test_a_sign_in_challenge_is_live_for_anyone_and_a_passed_one_for_none(world: World) -> None:
    sign_in = world.stepup.start(DECISION, CONTEXT, None, return_url="/")
    assert world.stepup.live(sign_in.id, world.phone) == sign_in
    assert world.stepup.live(sign_in.id, None) == sign_in
    world.rt.store.challenges.mark_passed(sign_in.id, now=world.clock.now)
    with pytest.raises(ChallengeGone):
        world.stepup.live(sign_in.id, None)


def test_a_challenge_begun_without_a_session_cannot_be_answered_with_a_factor(
        world: World) -> None:
    """A sign-in challenge (no session) is passed by signing in, never by some session's
    code or push: that would let any signed-in session complete another visitor's challenge."""
    challenge = world.stepup.start(DECISION, CONTEXT, None, return_url="/pay")
    with pytest.raises(ChallengeGone, match="Sign in first"):
        world.stepup.verify_totp(challenge.id, world.laptop, "123456", client_ip=CONTEXT.client_ip)
    with pytest.raises(ChallengeGone, match="Sign in first"):
        world.stepup.start_push(challenge.id, world.laptop, client_ip=CONTEXT.client_ip,
                                user_agent="Firefox")
    assert world.rt.store.challenges.get(challenge.id).status == "pending"  # type: ignore[union-attr]


def test_a_passed_challenge_is_found_for_its_own_session_only_until_its_request_is_sent(
        world: World) -> None:
    """`passed` finds the held request waiting for its confirmation; `settled` says whether this
    session passed the challenge (sent or not). Neither answers for another session."""
    challenge = world.stepup.start(DECISION, CONTEXT, world.laptop, return_url="/")
    assert world.stepup.passed(challenge.id, world.laptop) is None  # pending
    assert not world.stepup.settled(challenge.id, world.laptop)
    world.rt.store.challenges.mark_passed(challenge.id, now=world.clock.now)
    found = world.stepup.passed(challenge.id, world.laptop)
    assert found is not None and found.id == challenge.id and found.status == "passed"
    assert world.stepup.settled(challenge.id, world.laptop)
    assert world.stepup.passed(challenge.id, world.phone) is None
    assert not world.stepup.settled(challenge.id, world.phone)
    assert world.stepup.passed("missing", world.laptop) is None
    assert not world.stepup.settled("missing", world.laptop)
    assert world.rt.store.challenges.take_held(challenge.id, session_id=world.laptop.id) is not None
    assert world.stepup.passed(challenge.id, world.laptop) is None  # sent: not again
    assert world.stepup.settled(challenge.id, world.laptop)
    assert not world.stepup.settled(challenge.id, world.phone)


def test_wrong_recovery_codes_are_counted_audited_and_lock_with_the_factor_named(
        tmp_path: Path) -> None:
    clock = Clock()
    settings = "throttle: {hard_lock_after: 3, free_failures: 99}\n"
    rt = build_runtime(load_config(write_config(tmp_path, extra=settings)), clock=clock,
                       store=MemoryStore(), audit_log=MemoryAuditLog())
    try:
        user = build.user("alice", created=clock.now - 3600)
        rt.store.users.add(user)
        codes = generate_recovery_codes()
        rt.store.factors.replace_recovery_codes(user.id, [hash_recovery_code(c) for c in codes],
                                                now=clock.now - 60)
        laptop = build.session(user.id, created=clock.now, last_seen=clock.now)
        rt.store.sessions.add(laptop)
        challenge = build.challenge(
            user_id=user.id, session_id=laptop.id, created=clock.now - 1, expires=clock.now + 300,
            requirement=Requirement(level=Level.AAL2, scope="admin", reason="Approve"))
        rt.store.challenges.add(challenge)
        stepup = StepUp(rt)
        wrong = generate_recovery_codes()  # well formed, not this user's
        for code in wrong[:3]:
            with pytest.raises(VerificationFailed):
                stepup.verify_recovery(challenge.id, laptop, code, client_ip="198.51.100.23")
            clock.advance(3600)  # past every back-off: only the lock count stays
            rt.store.challenges.add(challenge := replace(
                challenge, id=build.new_id(), created=clock.now - 1, expires=clock.now + 300))
        rt.audit.flush(timeout=5)
        found = list(rt.audit_log.entries())
        failures = [e for e in found if e.outcome.startswith("failed:")]
        assert len(failures) == 3 and all(e.factor == "recovery" for e in failures)
        assert all(e.subject == user.id and e.outcome == "failed:wrong_code"
                   for e in failures)
        [locked] = [e for e in found if e.outcome == "locked"]
        assert (locked.factor, locked.subject) == ("recovery", user.id)
        assert locked.request["client_ip"]  # where the locking attempt came from
    finally:
        rt.close()
