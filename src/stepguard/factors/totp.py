"""TOTP factor (RFC 6238): 160-bit seeds, 30 s steps, ±1 step of skew, each step accepted once.

`verify_totp` takes the server's `now` and the user's `last_step` and returns the step it
accepted; the caller saves it with a compare-and-set (`UPDATE … SET last_step = :step WHERE
last_step IS NULL OR last_step < :step`), so of two racing submissions exactly one wins. There
is deliberately no parameter for a time sent by the client (ASVS V6.5.8: server time only).
Seeds are stored sealed (`factors.secretbox`), never in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pyotp
import segno

from stepguard.core.errors import ReplayDetected, VerificationFailed

Algorithm = Literal["sha1", "sha256", "sha512"]
SECRET_BYTES = 20  # 160 bits (RFC 4226 §4 recommends 160)
_DIGESTS: dict[str, Callable[..., Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


@dataclass(frozen=True, slots=True)
class TotpAccepted:
    """The step that matched; store it as the user's new `last_step` (compare-and-set)."""

    step: int


def new_totp_secret() -> str:
    """A fresh 160-bit seed from `secrets`, base32 without padding (32 characters)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def provisioning_uri(
    *, secret: str, account: str, issuer: str, digits: int = 6, period: int = 30
) -> str:
    """The `otpauth://totp/…` URI an authenticator app scans."""
    totp = pyotp.TOTP(secret, digits=digits, interval=period)
    return totp.provisioning_uri(name=account, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code (no external image request carries the seed)."""
    return segno.make(uri, error="m", micro=False).svg_inline(scale=4, border=2)


def totp_at(*, secret: str, step: int, digits: int = 6, algorithm: Algorithm = "sha1") -> str:
    """The code for one time step (RFC 6238 with T = `step`)."""
    if step < 0:
        raise ValueError("a time step is never negative")
    otp = pyotp.TOTP(secret, digits=digits, digest=_DIGESTS[algorithm])
    return otp.generate_otp(step)


def verify_totp(
    *,
    secret: str,
    code: str,
    now: float,
    last_step: int | None,
    digits: int = 6,
    period: int = 30,
    skew: int = 1,
    algorithm: Algorithm = "sha1",
) -> TotpAccepted:
    """Accept `code` for a step within `skew` of `now`'s step and newer than `last_step`.

    Raises `VerificationFailed` for a malformed or wrong code and `ReplayDetected` when the code
    matches a step already used (or older than the newest one used).
    """
    candidate = _normalise(code, digits)
    current = int(now // period)
    steps = [s for s in range(current - skew, current + skew + 1) if s >= 0]
    matches = [s for s, ok in _compare_all(secret, candidate, steps, digits, algorithm) if ok]
    if not matches:
        raise VerificationFailed("the code is wrong or expired", code="wrong_code")
    fresh = [s for s in matches if last_step is None or s > last_step]
    if not fresh:
        raise ReplayDetected("this code was already used")
    return TotpAccepted(step=min(fresh))


def _normalise(code: str, digits: int) -> str:
    candidate = code.replace(" ", "")
    if len(candidate) != digits or not (candidate.isascii() and candidate.isdigit()):
        raise VerificationFailed(f"the code must be {digits} digits", code="malformed")
    return candidate


def _compare_all(
    secret: str, candidate: str, steps: list[int], digits: int, algorithm: Algorithm
) -> list[tuple[int, bool]]:
    """Compare against every step, without stopping at the first match or mismatch."""
    expected = [totp_at(secret=secret, step=s, digits=digits, algorithm=algorithm) for s in steps]
    return [
        (s, hmac.compare_digest(e.encode(), candidate.encode()))
        for s, e in zip(steps, expected, strict=True)
    ]
