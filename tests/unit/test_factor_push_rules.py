"""Push rules at their edges: the signed digest's exact bytes, the sizes of ids and nonces, the
range of numbers and choices, every refusal's code and message, and the anti-bombing limits at
the exact second (including where float subtraction rounds an age onto the limit).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable

import pytest

from stepguard.core.errors import ReplayDetected, Throttled, VerificationFailed
from stepguard.factors.push import (
    check_device_key,
    check_push_rate,
    push_digest,
)
from tests.unit.test_factor_push import NOW, PHONE, SETTINGS, Device, answer, new_push

BAD_SIGNATURE = "The device signature is not valid."


def outcome_within(seconds: float, call: Callable[[], object]) -> object:
    """What `call` returns or raises, failing (not hanging) if it takes longer than `seconds`."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # the error is the outcome under test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"no answer within {seconds} s"
    return outcome[0]


def throttled_for(starts: list[float], now: float, pending: int | None = None) -> float | None:
    """The `retry_after` of the throttle, or None when a new push is allowed."""
    try:
        check_push_rate(recent_starts=starts, now=now, settings=SETTINGS, pending=pending)
    except Throttled as throttled:
        return throttled.retry_after
    return None


# The digest a device signs.
def test_the_digest_is_sha256_of_compact_ascii_json() -> None:
    digest = push_digest(
        challenge_id="c1", binding="ab" * 32, reasons=["Zahlung 5000 € an Müller"],
        bound_values=[("amount", "5000"), ("payee", "Müller")],
    )
    canonical = (
        '["c1","' + "ab" * 32 + '",["Zahlung 5000 \\u20ac an M\\u00fcller"],'
        '[["amount","5000"],["payee","M\\u00fcller"]]]'
    )
    assert digest == hashlib.sha256(canonical.encode("ascii")).hexdigest()


# Ids, nonces, numbers, choices.
def test_a_push_id_carries_128_bits_and_its_nonce_256_bits() -> None:
    push = new_push()
    assert len(push.id) == 22 and len(base64.urlsafe_b64decode(push.id + "==")) == 16
    assert len(push.nonce) == 43 and len(base64.urlsafe_b64decode(push.nonce + "=")) == 32


def test_two_choices_are_the_fewest_allowed() -> None:
    push = new_push(choices=2)
    assert len(push.options) == 2 and push.number in push.options
    with pytest.raises(ValueError, match="^choices must be between 2 and 90$"):
        new_push(choices=1)


def test_more_than_ninety_choices_is_refused_at_once() -> None:
    error = outcome_within(5, lambda: new_push(choices=91))
    assert isinstance(error, ValueError) and str(error) == "choices must be between 2 and 90"


def test_every_number_is_two_digits_so_ninety_choices_are_exactly_10_to_99() -> None:
    for _ in range(5):
        assert sorted(new_push(choices=90).options) == list(range(10, 100))


# Refusals: each with the code and message the caller shows or logs.
def test_a_signature_of_the_wrong_length_is_refused_with_its_message() -> None:
    push = new_push()
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, signature=b"\x00" * 63)
    assert (caught.value.code, str(caught.value)) == ("bad_signature", BAD_SIGNATURE)


def test_a_signature_that_does_not_verify_is_refused_with_its_message() -> None:
    push = new_push()
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, signature=b"\x01" * 64)
    assert (caught.value.code, str(caught.value)) == ("bad_signature", BAD_SIGNATURE)


def test_an_unsupported_key_is_refused_with_its_message() -> None:
    with pytest.raises(VerificationFailed) as caught:
        check_device_key(algorithm="RS256", public_key=PHONE.key.public_key)
    assert caught.value.code == "bad_key"
    assert str(caught.value) == "This device key is not supported."


@pytest.mark.parametrize(
    ("device", "session", "user", "at", "code", "message"),
    [
        (Device(user="mallory"), "phone", "alice", NOW + 5, "wrong_device",
         "This device is not registered to you."),
        (Device(created=NOW), "phone", "alice", NOW + 5, "new_device",
         "A device added after the request cannot approve it."),
        (PHONE, "phone", "mallory", NOW + 5, "wrong_user", "this push belongs to another user"),
        (PHONE, "laptop", "alice", NOW + 5, "same_session",
         "a push must be approved from another signed-in device"),
        (PHONE, "phone", "alice", NOW + 120, "expired", "this push has expired"),
    ],
)
def test_each_refusal_names_its_reason(
    device: Device, session: str, user: str, at: float, code: str, message: str
) -> None:
    push = new_push()
    with pytest.raises(VerificationFailed) as caught:
        answer(push, push.number, device=device, session=session, user=user, at=at)
    assert (caught.value.code, str(caught.value)) == (code, message)


def test_an_answered_push_is_refused_as_a_replay_with_its_message() -> None:
    push = new_push()
    closed = answer(push, push.number).push
    with pytest.raises(ReplayDetected) as caught:
        answer(closed, push.number, signed_push=push)
    assert (caught.value.code, str(caught.value)) == ("replay", "this push was already answered")


# Anti push-bombing at the exact limits.
def test_a_push_started_this_very_second_counts() -> None:
    assert throttled_for([NOW], NOW) == pytest.approx(120)


def test_even_a_sub_second_wait_is_enforced() -> None:
    assert throttled_for([NOW - 29.5], NOW, pending=0) == pytest.approx(0.5)


def test_a_push_started_exactly_expiry_ago_is_no_longer_open() -> None:
    # One push is still pending but its start is not in the list: wait a whole expiry.
    assert throttled_for([NOW - 120], NOW, pending=1) == pytest.approx(120)


# Ages that float subtraction rounds to exactly the limit, while start + limit rounds just past
# `now`: the age decides, so the limit has been reached and nothing waits a few femtoseconds.
def test_the_minimum_interval_ends_when_the_age_reaches_it() -> None:
    start, now = 0.4927020519050469, 30.492702051905045
    assert now - start == 30.0 and start + 30.0 > now
    assert throttled_for([start], now, pending=0) is None


def test_the_hourly_cap_forgets_a_push_exactly_an_hour_old() -> None:
    start, now = 391.98005903101307, 3991.980059031013
    assert now - start == 3600.0 and start + 3600.0 > now
    later = [now - 3000 + 300 * i for i in range(9)]  # nine more, all closed and spaced out
    assert throttled_for([start, *later], now, pending=0) is None
    assert throttled_for([start + 1, *later], now, pending=0) == pytest.approx(1)

