"""Push approval: number matching, another session of the same user, expiry, anti-bombing."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from stepguard.core.errors import ReplayDetected, Throttled, VerificationFailed
from stepguard.factors.push import (
    PushRequest,
    PushSettings,
    answer_push,
    check_push_rate,
    reject_push,
    start_push,
)

NOW = 1_700_000_000.0
SETTINGS = PushSettings()


def new_push(**overrides: object) -> PushRequest:
    return start_push(user_id="alice", requesting_session_id="laptop", now=NOW, **overrides)


def answer(
    push: PushRequest,
    picked: int,
    *,
    session: str = "phone",
    user: str = "alice",
    at: float = NOW + 5,
):
    return answer_push(
        push=push, picked=picked, approving_session_id=session, approving_user_id=user, now=at
    )


def test_start_shows_a_two_digit_number_among_distinct_decoys() -> None:
    push = new_push()
    assert 10 <= push.number <= 99
    assert len(push.options) == 3 and len(set(push.options)) == 3
    assert push.number in push.options
    assert all(10 <= option <= 99 for option in push.options)
    assert (push.status, push.created, push.expires) == ("pending", NOW, NOW + 120)
    assert len(push.id) >= 22  # ≥ 128 bits


def test_numbers_and_positions_vary() -> None:
    pushes = [new_push(choices=4) for _ in range(400)]
    assert len({p.number for p in pushes}) > 50
    positions = Counter(p.options.index(p.number) for p in pushes)
    assert set(positions) == {0, 1, 2, 3}  # the right answer is not always in the same place
    assert len({p.id for p in pushes}) == 400


def test_choices_are_bounded() -> None:
    with pytest.raises(ValueError):
        new_push(choices=1)
    assert len(new_push(choices=90).options) == 90


def test_the_right_number_from_another_session_approves() -> None:
    push = new_push()
    answered = answer(push, push.number)
    assert answered.status == "approved" and answered.approved
    assert answered.push.status == "approved" and answered.push.id == push.id
    assert (answered.approving_session_id, answered.answered_at) == ("phone", NOW + 5)


def test_a_wrong_number_returns_denied_to_be_saved_and_audited() -> None:
    push = new_push()
    wrong = next(o for o in push.options if o != push.number)
    answered = answer(push, wrong)
    assert answered.status == "denied" and not answered.approved
    assert answered.push.status == "denied"


def test_after_a_wrong_number_there_is_no_second_try() -> None:
    push = new_push()
    wrong = next(o for o in push.options if o != push.number)
    closed = answer(push, wrong).push
    with pytest.raises(ReplayDetected):
        answer(closed, push.number)


def test_a_second_answer_is_refused() -> None:
    push = new_push()
    approved = answer(push, push.number).push
    with pytest.raises(ReplayDetected):
        answer(approved, push.number)


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


def test_reject_closes_the_push_as_denied() -> None:
    push = new_push()
    rejected = reject_push(
        push=push, approving_session_id="phone", approving_user_id="alice", now=NOW + 1
    )
    assert rejected.status == "denied"
    with pytest.raises(VerificationFailed):
        reject_push(
            push=push, approving_session_id="laptop", approving_user_id="alice", now=NOW + 1
        )


def test_an_already_denied_push_cannot_be_approved() -> None:
    push = replace(new_push(), status="denied")
    with pytest.raises(ReplayDetected):
        answer(push, push.number)


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
