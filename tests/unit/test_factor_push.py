"""Push approval: a signed answer from an enrolled device key, number matching, expiry, bombing.

Real keys (`cryptography`) sign exactly what a browser's WebCrypto would: ECDSA P-256 with
SHA-256 as raw r||s, or Ed25519.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from stepguard.core.errors import ReplayDetected, Throttled, VerificationFailed
from stepguard.factors.push import (
    REFUSE,
    DeviceKey,
    PushRequest,
    PushSettings,
    answer_push,
    approval_message,
    check_device_key,
    check_push_rate,
    enrolment_message,
    push_digest,
    start_push,
    verify_device_signature,
)

NOW = 1_700_000_000.0
SETTINGS = PushSettings()
DIGEST = push_digest(
    challenge_id="c1", binding="ab" * 32, reasons=["Approve 5000 to Bob"],
    bound_values=[("amount", "5000"), ("payee", "Bob")],
)


class Device:
    """A browser's device key pair (the private half never leaves this object)."""

    def __init__(self, algorithm: str = "ES256", *, user: str = "alice", created: float = NOW - 60):
        self.algorithm = algorithm
        self.private = (
            ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256"
            else Ed25519PrivateKey.generate()
        )
        spki = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key = DeviceKey("dev-" + algorithm, user, algorithm, spki, created)

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # WebCrypto's raw form
        return self.private.sign(message)


PHONE = Device()


def new_push(**overrides: object) -> PushRequest:
    return start_push(
        user_id="alice", requesting_session_id="laptop", digest=DIGEST, now=NOW, **overrides
    )


def answer(
    push: PushRequest,
    picked: int,
    *,
    device: Device = PHONE,
    signature: bytes | None = None,
    signed_push: PushRequest | None = None,
    session: str = "phone",
    user: str = "alice",
    at: float = NOW + 5,
):
    if signature is None:
        signature = device.sign(approval_message(push=signed_push or push, picked=picked))
    return answer_push(
        push=push, picked=picked, signature=signature, device=device.key,
        approving_session_id=session, approving_user_id=user, now=at,
    )


def test_start_shows_a_two_digit_number_among_distinct_decoys() -> None:
    push = new_push()
    assert 10 <= push.number <= 99
    assert len(push.options) == 3 and len(set(push.options)) == 3
    assert push.number in push.options
    assert all(10 <= option <= 99 for option in push.options)
    assert (push.status, push.created, push.expires) == ("pending", NOW, NOW + 120)
    assert len(push.id) >= 22 and len(push.nonce) >= 43  # ≥ 128 / 256 bits
    assert push.digest == DIGEST


def test_numbers_nonces_and_positions_vary() -> None:
    pushes = [new_push(choices=4) for _ in range(400)]
    assert len({p.number for p in pushes}) > 50
    positions = Counter(p.options.index(p.number) for p in pushes)
    assert set(positions) == {0, 1, 2, 3}  # the right answer is not always in the same place
    assert len({p.id for p in pushes}) == 400 and len({p.nonce for p in pushes}) == 400


def test_choices_are_bounded() -> None:
    with pytest.raises(ValueError):
        new_push(choices=1)
    assert len(new_push(choices=90).options) == 90


def test_the_digest_covers_challenge_binding_reasons_and_values() -> None:
    base = {"challenge_id": "c1", "binding": "ab" * 32, "reasons": ["Approve 5000 to Bob"],
            "bound_values": [("amount", "5000"), ("payee", "Bob")]}
    assert push_digest(**base) == DIGEST  # type: ignore[arg-type]
    for key, value in [("challenge_id", "c2"), ("binding", "cd" * 32),
                       ("reasons", ["Approve 50 to Bob"]),
                       ("bound_values", [("amount", "5001"), ("payee", "Bob")])]:
        assert push_digest(**{**base, key: value}) != DIGEST  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_the_right_number_signed_by_an_enrolled_device_approves(algorithm: str) -> None:
    device = Device(algorithm)
    push = new_push()
    answered = answer(push, push.number, device=device)
    assert answered.status == "approved" and answered.approved and not answered.refused
    assert answered.push.status == "approved" and answered.push.id == push.id
    assert (answered.approving_session_id, answered.device_id, answered.answered_at) == (
        "phone", device.key.id, NOW + 5)


def test_an_unsigned_answer_from_another_session_never_counts() -> None:
    push = new_push()
    for signature in (b"", b"\x00" * 64, b"x" * 70):
        with pytest.raises(VerificationFailed) as caught:
            answer(push, push.number, signature=signature)
        assert caught.value.code == "bad_signature"


def test_a_signature_over_another_number_push_or_nonce_is_refused() -> None:
    push = new_push()
    wrong = next(o for o in push.options if o != push.number)
    other = new_push()
    cases = [
        PHONE.sign(approval_message(push=push, picked=wrong)),  # signed one number, sent another
        PHONE.sign(approval_message(push=other, picked=push.number)),  # another push
        PHONE.sign(approval_message(push=replace(push, nonce="n" * 43), picked=push.number)),
        PHONE.sign(approval_message(push=replace(push, digest="0" * 64), picked=push.number)),
    ]
    for signature in cases:
        with pytest.raises(VerificationFailed) as caught:
            answer(push, push.number, signature=signature)
        assert caught.value.code == "bad_signature"


def test_a_signature_from_another_users_device_is_refused() -> None:
    push = new_push()
    mallory = Device(user="mallory")
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, device=mallory)
    assert caught.value.code == "wrong_device"
    # Mallory's key presented as Alice's device: the signature does not verify.
    impostor = Device()
    signature = mallory.sign(approval_message(push=push, picked=push.number))
    with pytest.raises(VerificationFailed):
        answer(push, push.number, device=impostor, signature=signature)


def test_a_device_enrolled_after_the_push_cannot_answer_it() -> None:
    push = new_push()
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, device=Device(created=NOW))
    assert caught.value.code == "new_device"


def test_a_wrong_number_returns_denied_to_be_saved_and_audited() -> None:
    push = new_push()
    wrong = next(o for o in push.options if o != push.number)
    answered = answer(push, wrong)
    assert answered.status == "denied" and not answered.approved and not answered.refused
    assert answered.push.status == "denied"


def test_this_was_not_me_is_a_signed_refusal() -> None:
    push = new_push()
    answered = answer(push, REFUSE)
    assert answered.status == "denied" and answered.refused
    with pytest.raises(VerificationFailed):
        answer(push, REFUSE, signature=b"\x00" * 64)


def test_replaying_a_signed_answer_finds_the_push_closed() -> None:
    push = new_push()
    signature = PHONE.sign(approval_message(push=push, picked=push.number))
    closed = answer(push, push.number, signature=signature).push
    with pytest.raises(ReplayDetected):
        answer(closed, push.number, signature=signature)


def test_after_a_wrong_number_there_is_no_second_try() -> None:
    push = new_push()
    wrong = next(o for o in push.options if o != push.number)
    closed = answer(push, wrong).push
    with pytest.raises(ReplayDetected):
        answer(closed, push.number, signed_push=push)


def test_the_requesting_session_cannot_approve_itself() -> None:
    push = new_push()
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, session="laptop")
    assert caught.value.code == "same_session"


def test_another_users_session_cannot_answer() -> None:
    push = new_push()
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, user="mallory")
    assert caught.value.code == "wrong_user"


def test_an_expired_push_is_refused() -> None:
    push = new_push()
    answer(push, push.number, at=NOW + 119.9)
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, at=NOW + 120)
    assert caught.value.code == "expired"


def test_expiry_follows_settings() -> None:
    push = new_push(settings=PushSettings(expiry=30))
    assert push.expires == NOW + 30


# Device keys.
def test_device_keys_must_be_p256_or_ed25519_spki() -> None:
    check_device_key(algorithm="ES256", public_key=Device().key.public_key)
    check_device_key(algorithm="EdDSA", public_key=Device("EdDSA").key.public_key)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for algorithm, key in [
        ("ES256", p384), ("ES256", Device("EdDSA").key.public_key),
        ("EdDSA", Device().key.public_key), ("RS256", Device().key.public_key),
        ("ES256", b""), ("ES256", b"\x30" * 300), ("ES256", b"not der"),
    ]:
        with pytest.raises(VerificationFailed) as caught:
            check_device_key(algorithm=algorithm, public_key=key)
        assert caught.value.code == "bad_key"


def test_enrolment_proof_of_possession() -> None:
    device = Device()
    message = enrolment_message(enrolment_id="e1", nonce="n1")
    verify_device_signature(algorithm="ES256", public_key=device.key.public_key,
                            message=message, signature=device.sign(message))
    with pytest.raises(VerificationFailed):
        verify_device_signature(algorithm="ES256", public_key=device.key.public_key,
                                message=enrolment_message(enrolment_id="e1", nonce="n2"),
                                signature=device.sign(message))


# Anti push-bombing.
def test_first_push_is_allowed() -> None:
    check_push_rate(recent_starts=[], now=NOW, settings=SETTINGS)


def test_a_second_push_while_one_is_pending_is_throttled() -> None:
    with pytest.raises(Throttled) as caught:
        check_push_rate(recent_starts=[NOW - 40], now=NOW, settings=SETTINGS)
    assert caught.value.retry_after == pytest.approx(80)


def test_a_known_closed_push_only_waits_for_the_minimum_interval() -> None:
    with pytest.raises(Throttled) as caught:
        check_push_rate(recent_starts=[NOW - 10], now=NOW, settings=SETTINGS, pending=0)
    assert caught.value.retry_after == pytest.approx(20)
    check_push_rate(recent_starts=[NOW - 31], now=NOW, settings=SETTINGS, pending=0)


def test_after_expiry_and_interval_a_new_push_is_allowed() -> None:
    check_push_rate(recent_starts=[NOW - 121], now=NOW, settings=SETTINGS)


def test_hourly_cap() -> None:
    starts = [NOW - 3500 + 300 * i for i in range(10)]  # ten in the last hour, all closed
    assert max(starts) <= NOW - 200
    with pytest.raises(Throttled) as caught:
        check_push_rate(recent_starts=starts, now=NOW, settings=SETTINGS, pending=0)
    assert caught.value.retry_after == pytest.approx(100)
    check_push_rate(recent_starts=starts, now=NOW + 101, settings=SETTINGS, pending=0)


def test_future_timestamps_do_not_unlock_or_break_the_check() -> None:
    with pytest.raises(Throttled):
        check_push_rate(recent_starts=[NOW - 5, NOW + 1000], now=NOW, settings=SETTINGS)


def test_explicit_pending_count_wins() -> None:
    with pytest.raises(Throttled):
        check_push_rate(recent_starts=[], now=NOW, settings=SETTINGS, pending=1)
    check_push_rate(recent_starts=[], now=NOW, settings=PushSettings(max_pending=2), pending=1)
