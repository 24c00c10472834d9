"""Push approval with number matching, answered only by an ENROLLED DEVICE KEY of the same user.

A push is possession only if the approver proves a registered key: another browser session of the
same user (which may hold nothing but the password) never counts. Each push device holds a key
pair made in its browser with WebCrypto (ECDSA P-256, or Ed25519), the private key
non-extractable in IndexedDB; the server keeps the public key (SPKI DER). Enrolment proves
possession by signing the enrolment nonce (`enrolment_message`).

The requesting screen shows a two-digit number; the approving device shows that number among
decoys and the user picks it. The device signs `approval_message`: the push id, a server nonce,
the digest of what the push is for (challenge id, binding digest, reasons, bound values) and the
number picked (0 = "this wasn't me"). `answer_push` verifies that signature with `cryptography`
and returns the state change: `approved` for the right number, `denied` for a wrong one (the
signal of a push-bombing victim tapping blindly: saved, audited, counted as a failure, no second
try) or for a refusal. Everything that is not a valid answer raises: expired, already answered,
another user's push or device, the requesting session itself, a device enrolled after the push,
a bad signature. The caller saves the answer with a compare-and-set on `status = 'pending'`, so
of two racing answers exactly one lands and a replayed signature finds the push closed.
`check_push_rate` is the anti-bombing throttle (per user, across all of their challenges).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key

from stepguard.core.errors import ReplayDetected, Throttled, VerificationFailed

PushStatus = Literal["pending", "approved", "denied"]
DeviceAlgorithm = Literal["ES256", "EdDSA"]
DEVICE_ALGORITHMS: frozenset[str] = frozenset({"ES256", "EdDSA"})
NUMBER_MIN, NUMBER_MAX = 10, 99
REFUSE = 0  # the number a device signs for "this wasn't me"
MAX_PUBLIC_KEY = 256  # bytes of SPKI DER (P-256: 91, Ed25519: 44)
SIGNATURE_SIZE = 64  # raw r||s (WebCrypto ECDSA P-256) or an Ed25519 signature
_APPROVAL = "stepguard-push-approval-v1"
_ENROLMENT = "stepguard-push-enrolment-v1"


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Lifetime and anti-bombing limits (seconds / counts)."""

    expiry: float = 120.0
    max_pending: int = 1
    min_interval: float = 30.0
    max_per_hour: int = 10


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """An enrolled push device: its public key (SPKI DER) and when it was enrolled."""

    id: str
    user_id: str
    algorithm: str
    public_key: bytes
    created: float


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One push: `number` is shown on the requesting screen, `options` on the approving device.

    `nonce` is fresh per push; `digest` covers what the push is for (see `push_digest`).
    """

    id: str
    user_id: str
    requesting_session_id: str
    number: int
    options: tuple[int, ...]
    nonce: str
    digest: str
    created: float
    expires: float
    status: PushStatus = "pending"


@dataclass(frozen=True, slots=True)
class PushAnswered:
    """The state change to save: the push closed as `approved` or `denied` by `device_id`."""

    push: PushRequest
    status: PushStatus
    approving_session_id: str
    device_id: str
    answered_at: float
    refused: bool = False

    @property
    def approved(self) -> bool:
        return self.status == "approved"


def push_digest(
    *,
    challenge_id: str,
    binding: str,
    reasons: Sequence[str],
    bound_values: Sequence[tuple[str, str]],
) -> str:
    """SHA-256 (hex) of what a push approves: the challenge, its binding digest, reasons, values."""
    canonical = json.dumps(
        [challenge_id, binding, list(reasons), [list(pair) for pair in bound_values]],
        ensure_ascii=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def start_push(
    *,
    user_id: str,
    requesting_session_id: str,
    digest: str,
    now: float,
    choices: int = 3,
    settings: PushSettings | None = None,
) -> PushRequest:
    """A new pending push with a random number, `choices - 1` distinct decoys and a nonce."""
    if not 2 <= choices <= NUMBER_MAX - NUMBER_MIN + 1:
        raise ValueError("choices must be between 2 and 90")
    expiry = (settings or PushSettings()).expiry
    number = _random_number()
    return PushRequest(
        id=secrets.token_urlsafe(16),
        user_id=user_id,
        requesting_session_id=requesting_session_id,
        number=number,
        options=_with_decoys(number, choices),
        nonce=secrets.token_urlsafe(32),
        digest=digest,
        created=now,
        expires=now + expiry,
    )


def approval_message(*, push: PushRequest, picked: int) -> bytes:
    """The exact bytes a device signs to answer `push` with `picked` (0 = refuse)."""
    fields = (_APPROVAL, push.id, push.nonce, push.digest, str(int(picked)))
    return "\n".join(fields).encode()


def enrolment_message(*, enrolment_id: str, nonce: str) -> bytes:
    """The exact bytes a new device signs to prove it holds the private key it enrols."""
    return "\n".join((_ENROLMENT, enrolment_id, nonce)).encode()


def check_device_key(*, algorithm: str, public_key: bytes) -> None:
    """Raise `VerificationFailed` unless `public_key` is SPKI DER of a P-256 or Ed25519 key."""
    _load_key(algorithm, public_key)


def verify_device_signature(
    *, algorithm: str, public_key: bytes, message: bytes, signature: bytes
) -> None:
    """Raise `VerificationFailed` (code `bad_signature`) unless `signature` signs `message`."""
    key = _load_key(algorithm, public_key)
    if len(signature) != SIGNATURE_SIZE:
        raise VerificationFailed("The device signature is not valid.", code="bad_signature")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, message)
    except InvalidSignature:
        raise VerificationFailed(
            "The device signature is not valid.", code="bad_signature"
        ) from None


def answer_push(
    *,
    push: PushRequest,
    picked: int,
    signature: bytes,
    device: DeviceKey,
    approving_session_id: str,
    approving_user_id: str,
    now: float,
) -> PushAnswered:
    """Verify a device's signed answer; `approved` only for the right number, else `denied`."""
    _check_answerable(push, approving_session_id, approving_user_id, now)
    if not hmac.compare_digest(device.user_id.encode(), push.user_id.encode()):
        raise VerificationFailed("This device is not registered to you.", code="wrong_device")
    if device.created >= push.created:
        raise VerificationFailed(
            "A device added after the request cannot approve it.", code="new_device"
        )
    verify_device_signature(
        algorithm=device.algorithm,
        public_key=device.public_key,
        message=approval_message(push=push, picked=picked),
        signature=signature,
    )
    refused = picked == REFUSE
    right = not refused and hmac.compare_digest(str(picked).encode(), str(push.number).encode())
    status: PushStatus = "approved" if right else "denied"
    return PushAnswered(
        push=replace(push, status=status),
        status=status,
        approving_session_id=approving_session_id,
        device_id=device.id,
        answered_at=now,
        refused=refused,
    )


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


def _load_key(algorithm: str, public_key: bytes) -> ec.EllipticCurvePublicKey | Ed25519PublicKey:
    invalid = VerificationFailed("This device key is not supported.", code="bad_key")
    if algorithm not in DEVICE_ALGORITHMS or not 0 < len(public_key) <= MAX_PUBLIC_KEY:
        raise invalid
    try:
        key = load_der_public_key(public_key)
    except (ValueError, UnsupportedAlgorithm):
        raise invalid from None
    if (
        algorithm == "ES256"
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    if algorithm == "EdDSA" and isinstance(key, Ed25519PublicKey):
        return key
    raise invalid


def _random_number() -> int:
    return NUMBER_MIN + secrets.randbelow(NUMBER_MAX - NUMBER_MIN + 1)


def _with_decoys(number: int, choices: int) -> tuple[int, ...]:
    options = {number}
    while len(options) < choices:
        options.add(_random_number())
    ordered = sorted(options)
    secrets.SystemRandom().shuffle(ordered)
    return tuple(ordered)
