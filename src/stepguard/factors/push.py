"""Push approval with number matching, to ANOTHER signed-in session of the same user.

The requesting screen shows a two-digit number; the approving device shows that number among
decoys and the user picks it. A pick of the wrong number is the signal of a push-bombing victim
tapping blindly, so it does not raise: `answer_push` returns the `denied` state change, which the
caller saves (closing the push, so there is no second try), audits and counts as a failed
attempt. Refusals that are not an answer at all (expired, same session, another user, already
answered) raise. The caller saves the answer with a compare-and-set on `status = 'pending'`, so
of two racing answers exactly one lands. `check_push_rate` is the anti-bombing throttle.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from stepguard.core.errors import ReplayDetected, Throttled, VerificationFailed

PushStatus = Literal["pending", "approved", "denied"]
NUMBER_MIN, NUMBER_MAX = 10, 99


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Lifetime and anti-bombing limits (seconds / counts)."""

    expiry: float = 120.0
    max_pending: int = 1
    min_interval: float = 30.0
    max_per_hour: int = 10


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One push: `number` is shown on the requesting screen, `options` on the approving device."""

    id: str
    user_id: str
    requesting_session_id: str
    number: int
    options: tuple[int, ...]
    created: float
    expires: float
    status: PushStatus = "pending"


@dataclass(frozen=True, slots=True)
class PushAnswered:
    """The state change to save: the push closed as `approved` or `denied`."""

    push: PushRequest
    status: PushStatus
    approving_session_id: str
    answered_at: float

    @property
    def approved(self) -> bool:
        return self.status == "approved"


def start_push(
    *,
    user_id: str,
    requesting_session_id: str,
    now: float,
    choices: int = 3,
    settings: PushSettings | None = None,
) -> PushRequest:
    """A new pending push with a random number and `choices - 1` distinct decoys, shuffled."""
    if not 2 <= choices <= NUMBER_MAX - NUMBER_MIN + 1:
        raise ValueError("choices must be between 2 and 90")
    expiry = (settings or PushSettings()).expiry
    number = _random_number()
    options = _with_decoys(number, choices)
    return PushRequest(
        id=secrets.token_urlsafe(16),
        user_id=user_id,
        requesting_session_id=requesting_session_id,
        number=number,
        options=options,
        created=now,
        expires=now + expiry,
    )


def answer_push(
    *,
    push: PushRequest,
    picked: int,
    approving_session_id: str,
    approving_user_id: str,
    now: float,
) -> PushAnswered:
    """Approve when `picked` is the push's number, deny otherwise; raise when it cannot answer."""
    _check_answerable(push, approving_session_id, approving_user_id, now)
    right = hmac.compare_digest(str(picked).encode(), str(push.number).encode())
    status: PushStatus = "approved" if right else "denied"
    return _answered(push, status, approving_session_id, now)


def reject_push(
    *, push: PushRequest, approving_session_id: str, approving_user_id: str, now: float
) -> PushAnswered:
    """The user pressed "this wasn't me": close the push as denied (audit it as suspicious)."""
    _check_answerable(push, approving_session_id, approving_user_id, now)
    return _answered(push, "denied", approving_session_id, now)


def check_push_rate(
    *,
    recent_starts: Sequence[float],
    now: float,
    settings: PushSettings,
    pending: int | None = None,
) -> None:
    """Raise `Throttled` when another push for this user now would be push bombing.

    `recent_starts` are the user's push start times (at least the last hour). `pending` is the
    number of still-open pushes; when unknown, every start younger than `expiry` counts as open.
    """
    wait = _push_wait(sorted(t for t in recent_starts if t <= now), now, settings, pending)
    if wait > 0:
        raise Throttled(wait)


def _push_wait(
    starts: list[float], now: float, settings: PushSettings, pending: int | None
) -> float:
    """Seconds until a new push is allowed (0 when it is allowed now)."""
    open_starts = [t for t in starts if now - t < settings.expiry]
    open_now = len(open_starts) if pending is None else pending
    waits = [0.0]
    if open_now >= settings.max_pending:
        waits.append(min(open_starts) + settings.expiry - now if open_starts else settings.expiry)
    if starts and now - starts[-1] < settings.min_interval:
        waits.append(starts[-1] + settings.min_interval - now)
    last_hour = [t for t in starts if now - t < 3600.0]
    if len(last_hour) >= settings.max_per_hour:
        waits.append(last_hour[-settings.max_per_hour] + 3600.0 - now)
    return max(waits)


def _check_answerable(
    push: PushRequest, approving_session_id: str, approving_user_id: str, now: float
) -> None:
    if push.status != "pending":
        raise ReplayDetected("this push was already answered")
    if now >= push.expires:
        raise VerificationFailed("this push has expired", code="expired")
    if not hmac.compare_digest(approving_user_id.encode(), push.user_id.encode()):
        raise VerificationFailed("this push belongs to another user", code="wrong_user")
    if hmac.compare_digest(approving_session_id.encode(), push.requesting_session_id.encode()):
        raise VerificationFailed(
            "a push must be approved from another signed-in device", code="same_session"
        )


def _answered(
    push: PushRequest, status: PushStatus, approving_session_id: str, now: float
) -> PushAnswered:
    return PushAnswered(
        push=replace(push, status=status),
        status=status,
        approving_session_id=approving_session_id,
        answered_at=now,
    )


def _random_number() -> int:
    return NUMBER_MIN + secrets.randbelow(NUMBER_MAX - NUMBER_MIN + 1)


def _with_decoys(number: int, choices: int) -> tuple[int, ...]:
    options = {number}
    while len(options) < choices:
        options.add(_random_number())
    ordered = sorted(options)
    secrets.SystemRandom().shuffle(ordered)
    return tuple(ordered)
