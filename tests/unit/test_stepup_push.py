"""StepUp's push approval on the in-memory store: who may answer, what a poll returns, what is
counted and audited (the rules `make mutate` holds; tests/integration/test_push.py drives the
same flow over HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from stepguard.audit.ledger import AuditEntry
from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.decision import Requirement
from stepguard.core.errors import ReplayDetected, Throttled, VerificationFailed
from stepguard.core.levels import Level
from stepguard.core.throttle import user_factor_key
from stepguard.factors import push as push_factor
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.service.stepup import ChallengeGone, Passed, StepUp, _push_request
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import FactorRecord, PushRecord, SessionRecord
from tests.contract import build
from tests.support.gateway import Clock, write_config

LAPTOP_IP = "198.51.100.23"
GEO = """
risk:
  locations: [{network: 198.51.100.0/24, country: DE, city: Berlin}]
"""


class Key:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.spki = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, push: PushRecord, picked: int) -> bytes:
        message = push_factor.approval_message(push=_push_request(push), picked=picked)
        r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class World:
    rt: Runtime
    clock: Clock
    stepup: StepUp
    user_id: str
    laptop: SessionRecord
    phone: SessionRecord
    device: FactorRecord
    key: Key
    challenge_id: str

    def send(self) -> PushRecord:
        return self.stepup.start_push(self.challenge_id, self.laptop, client_ip=LAPTOP_IP,
                                      user_agent="Firefox")

    def answer(self, push: PushRecord, picked: int | None = None, *, key: Key | None = None,
               device_id: str | None = None, approver: SessionRecord | None = None) -> str:
        picked = push.number if picked is None else picked
        return self.stepup.answer_push(
            push.id, approver or self.phone, picked=picked,
            device_id=self.device.id if device_id is None else device_id,
            signature=(key or self.key).sign(push, picked), client_ip="192.0.2.9")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = make_world(tmp_path)
    yield made
    made.rt.close()


def make_world(tmp_path: Path, settings: str = "") -> World:
    """Alice with a push device, a laptop and a phone session, and a pending aal2 challenge of
    the laptop's; `settings` are added to the configuration (close `rt` when done)."""
    clock = Clock()
    loaded = load_config(write_config(tmp_path, extra=GEO + settings))
    rt = build_runtime(loaded, clock=clock, store=MemoryStore(), audit_log=MemoryAuditLog())
    user = build.user("alice", created=clock.now - 3600)
    rt.store.users.add(user)
    key = Key()
    device = build.factor(user.id, "push", created=clock.now - 60, public_key=key.spki,
                          data={"alg": "ES256"})
    rt.store.factors.add(device)
    laptop = build.session(user.id, created=clock.now, last_seen=clock.now, device_id="laptop")
    phone = build.session(user.id, created=clock.now, last_seen=clock.now, device_id="phone")
    rt.store.sessions.add(laptop)
    rt.store.sessions.add(phone)
    challenge = build.challenge(
        user_id=user.id, session_id=laptop.id, created=clock.now - 1, expires=clock.now + 300,
        requirement=Requirement(level=Level.AAL2, scope="admin", single_use=True,
                                reason="Approve"))
    rt.store.challenges.add(challenge)
    return World(rt, clock, StepUp(rt), user.id, laptop, phone, device, key, challenge.id)


def entries(world: World) -> list[AuditEntry]:
    world.rt.audit.flush(timeout=5)
    return list(world.rt.audit_log.entries())


def test_a_push_records_where_it_comes_from_and_is_audited(world: World) -> None:
    push = world.send()
    assert (push.challenge_id, push.user_id, push.requesting_session_id) == (
        world.challenge_id, world.user_id, world.laptop.id)
    assert (push.client_ip, push.user_agent, push.location) == (LAPTOP_IP, "Firefox",
                                                                 "Berlin, DE")
    assert push.status == "pending" and push.expires > world.clock.now
    assert world.rt.store.pushes.get(push.id) == push
    entry = entries(world)[-1]
    assert (entry.kind, entry.outcome, entry.factor, entry.subject) == (
        "verification", "push_sent", "push", world.user_id)
    assert entry.detail == {"challenge": world.challenge_id, "push": push.id}


def test_a_push_without_a_client_address_has_no_location(world: World) -> None:
    push = world.stepup.start_push(world.challenge_id, world.laptop, client_ip="",
                                   user_agent="x" * 600)
    assert (push.client_ip, push.location, len(push.user_agent)) == ("", "", 512)


def test_a_second_push_while_one_waits_is_throttled(world: World) -> None:
    world.send()
    with pytest.raises(Throttled):
        world.send()


def test_the_push_digest_covers_what_is_approved(world: World) -> None:
    push = world.send()
    challenge = world.rt.store.challenges.get(world.challenge_id)
    assert challenge is not None
    assert push.digest == push_factor.push_digest(
        challenge_id=challenge.id, binding=challenge.binding, reasons=challenge.reasons,
        bound_values=challenge.bound_values)


def test_the_right_number_signed_by_the_enrolled_device_passes_the_challenge(
        world: World) -> None:
    push = world.send()
    assert world.stepup.current_push(world.rt.store.challenges.get(world.challenge_id)) == push
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip=LAPTOP_IP) \
        == "pending"
    assert world.answer(push) == "approved"
    stored = world.rt.store.pushes.get(push.id)
    assert stored is not None and (stored.status, stored.device_id) == ("approved",
                                                                         world.device.id)
    assert world.rt.store.factors.get(world.device.id).last_used == world.clock.now
    entry = entries(world)[-1]
    assert (entry.outcome, entry.session, entry.rule) == (
        "approved", world.rt.session_ref(world.phone.id), "large-transfer")
    assert entry.detail == {"challenge": world.challenge_id, "push": push.id,
                            "device": world.device.id}
    passed = world.stepup.poll_push(world.challenge_id, world.laptop, client_ip=LAPTOP_IP)
    assert isinstance(passed, Passed) and passed.grant is not None
    assert passed.grant.level is Level.AAL2 and passed.grant.factor == "push"
    assert world.stepup.current_push(world.rt.store.challenges.get(world.challenge_id)) is None


def test_an_approval_clears_the_push_failures_and_a_refusal_keeps_them(world: World) -> None:
    push = world.send()
    with pytest.raises(VerificationFailed):
        world.answer(push, key=Key())  # a signature by another key
    key = user_factor_key(world.user_id, "push")
    assert world.rt.store.history.load(world.user_id).recent_failures  # in the risk history
    assert world.rt.store.throttle.state(key, now=world.clock.now).consecutive == 1
    with pytest.raises(Throttled):
        world.answer(push)  # even the right answer waits its back-off
    world.clock.advance(2)
    assert world.answer(push) == "approved"
    assert world.rt.store.throttle.state(key, now=world.clock.now).consecutive == 0


def test_a_refusal_is_saved_audited_and_never_passes(world: World) -> None:
    push = world.send()
    assert world.answer(push, push_factor.REFUSE) == "denied"
    entry = entries(world)[-1]
    assert entry.outcome == "refused"
    assert world.rt.store.history.load(world.user_id).recent_failures
    key = user_factor_key(world.user_id, "push")
    assert world.rt.store.throttle.state(key, now=world.clock.now).consecutive == 1
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip=LAPTOP_IP) \
        == "denied"


def test_a_wrong_number_is_denied_and_audited_as_denied(world: World) -> None:
    push = world.send()
    wrong = next(n for n in push.options if n != push.number)
    assert world.answer(push, wrong) == "denied"
    assert entries(world)[-1].outcome == "denied"
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip=LAPTOP_IP) \
        == "denied"


def test_answering_an_answered_push_again_is_refused(world: World) -> None:
    push = world.send()
    world.answer(push)
    with pytest.raises((ReplayDetected, VerificationFailed)):
        world.answer(push)


@pytest.mark.parametrize("who", ["other user", "unknown push"])
def test_a_push_of_another_user_or_none_is_gone(world: World, who: str) -> None:
    push = world.send()
    if who == "other user":
        approver = replace(world.phone, user_id="mallory")
        with pytest.raises(ChallengeGone):
            world.answer(push, approver=approver)
    else:
        with pytest.raises(ChallengeGone):
            world.stepup.answer_push("nope", world.phone, picked=1, device_id=world.device.id,
                                     signature=b"", client_ip="")


def test_a_push_for_a_passed_or_missing_challenge_is_gone(world: World) -> None:
    push = world.send()
    world.rt.store.challenges.mark_passed(world.challenge_id, now=world.clock.now)
    with pytest.raises(ChallengeGone):
        world.answer(push)
    world.rt.store.pushes.add(replace(push, id="p2", challenge_id="missing"))
    with pytest.raises(ChallengeGone):
        world.answer(replace(push, id="p2"))


@pytest.mark.parametrize("device", ["none", "unknown", "totp", "bobs", "new"])
def test_only_an_enrolled_push_device_of_the_user_enrolled_before_the_challenge_answers(
        world: World, device: str) -> None:
    push = world.send()
    if device == "none":
        device_id = ""
    elif device == "unknown":
        device_id = "no-such-device"
    else:
        factor = {
            "totp": build.factor(world.user_id, "totp", created=world.clock.now - 60),
            "bobs": build.factor("bob", "push", created=world.clock.now - 60,
                                 public_key=world.key.spki, data={"alg": "ES256"}),
            "new": build.factor(world.user_id, "push", created=world.clock.now,
                                public_key=world.key.spki, data={"alg": "ES256"}),
        }[device]
        world.rt.store.factors.add(factor)
        device_id = factor.id
    with pytest.raises(VerificationFailed) as failed:
        world.answer(push, device_id=device_id)
    assert failed.value.code == ("new_device" if device == "new" else "unknown_device")
    assert entries(world)[-1].outcome == f"failed:{failed.value.code}"
    assert world.rt.store.pushes.get(push.id).status == "pending"  # type: ignore[union-attr]


def test_the_requesting_session_cannot_approve_its_own_push(world: World) -> None:
    push = world.send()
    with pytest.raises(VerificationFailed):
        world.answer(push, approver=world.laptop)


def test_an_error_while_saving_gives_the_attempt_back(world: World,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    push = world.send()

    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("store down")

    monkeypatch.setattr(world.rt.store.pushes, "answer", broken)
    for _ in range(5):
        with pytest.raises(RuntimeError):
            world.answer(push)
    monkeypatch.undo()
    assert world.answer(push) == "approved"  # five abandoned attempts cost nothing


def test_poll_knows_only_this_sessions_push(world: World) -> None:
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip="") == "none"
    push = world.send()
    foreign = replace(push, id="p-foreign", requesting_session_id=world.phone.id,
                      created=push.created + 1)
    world.rt.store.pushes.add(foreign)
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip="") == "none"


def test_poll_reports_an_expired_push(world: World) -> None:
    push = world.send()
    world.clock.now = push.expires
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip="") == "expired"
    world.clock.now = push.expires - 0.5
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip="") == "pending"
    challenge = world.rt.store.challenges.get(world.challenge_id)
    assert world.stepup.current_push(challenge) == push  # type: ignore[arg-type]
    world.clock.now = push.expires
    assert world.stepup.current_push(challenge) is None  # type: ignore[arg-type]


def test_an_approval_by_a_device_removed_since_does_not_pass(world: World) -> None:
    push = world.send()
    assert world.answer(push) == "approved"
    world.rt.store.factors.remove(world.device.id, user_id=world.user_id)
    assert world.stepup.poll_push(world.challenge_id, world.laptop, client_ip="") == "denied"


def test_pending_pushes_lists_only_other_sessions_live_challenges(world: World) -> None:
    assert world.stepup.pending_pushes(world.phone) == []
    push = world.send()
    found = world.stepup.pending_pushes(world.phone)
    assert [(p.id, c.id) for p, c in found] == [(push.id, world.challenge_id)]
    assert world.stepup.pending_pushes(world.laptop) == []  # never to the requesting session
    world.clock.now = push.expires - 1
    challenge = world.rt.store.challenges.get(world.challenge_id)
    world.clock.now = challenge.expires  # type: ignore[union-attr]
    assert world.stepup.pending_pushes(world.phone) == []
    world.clock.now = push.created
    world.rt.store.challenges.mark_passed(world.challenge_id, now=world.clock.now)
    assert world.stepup.pending_pushes(world.phone) == []


def test_push_devices_lists_the_users_push_factors(world: World) -> None:
    world.rt.store.factors.add(build.factor(world.user_id, "totp"))
    assert [f.id for f in world.stepup.push_devices(world.user_id)] == [world.device.id]


@pytest.mark.parametrize("client_ip", [LAPTOP_IP, ""])
def test_the_passed_entry_names_challenge_grant_and_level_and_never_the_address(
        world: World, client_ip: str) -> None:
    """The verification entry says an address was present, never which (the request part of
    the ledger holds it pseudonymised)."""
    push = world.send()
    assert world.answer(push) == "approved"
    passed = world.stepup.poll_push(world.challenge_id, world.laptop, client_ip=client_ip)
    assert isinstance(passed, Passed) and passed.grant is not None
    entry = entries(world)[-1]
    assert entry.detail == {"challenge": world.challenge_id, "grant": passed.grant.id,
                            "level": "aal2", "ip": "present" if client_ip else ""}
    assert LAPTOP_IP not in str(entry.detail)


def test_the_step_up_page_reads_its_challenge_methods_and_waiting_push(world: World) -> None:
    challenge = world.rt.store.challenges.get(world.challenge_id)
    assert world.stepup.page(world.challenge_id, world.laptop, world.user_id) == (
        challenge, ["push"], None)
    push = world.send()
    assert world.stepup.page(world.challenge_id, world.laptop, world.user_id) == (
        challenge, ["push"], push)
    # The methods are the user's: another user with no factor has none.
    assert world.stepup.page(world.challenge_id, world.laptop, "someone-else")[1] == []


def test_the_step_up_page_of_another_session_or_a_dead_challenge_is_gone(world: World) -> None:
    with pytest.raises(ChallengeGone, match="belongs to another session"):
        world.stepup.page(world.challenge_id, world.phone, world.user_id)
    with pytest.raises(ChallengeGone):
        world.stepup.page(world.challenge_id, None, world.user_id)
    with pytest.raises(ChallengeGone, match="expired"):
        world.stepup.page("no-such-challenge", world.laptop, world.user_id)
    world.clock.now += 301
    with pytest.raises(ChallengeGone, match="expired"):
        world.stepup.page(world.challenge_id, world.laptop, world.user_id)
