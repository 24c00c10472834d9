"""Recovery codes: 10 single-use codes of ≥ 64 random bits each, stored hashed.

A code is 15 characters from a 30-symbol alphabet without look-alikes (no 0/O, 1/I/L, U),
shown as `xxxxx-xxxxx-xxxxx`: 15 × log2(30) ≈ 73.6 bits from `secrets`.

Hashing choice: SHA-256 with a domain-separation prefix, no pepper and no slow hash. A slow hash
protects guessable human secrets; these codes are uniformly random with ≥ 73 bits, so searching a
stolen hash costs ~2^73 SHA-256 evaluations, which is out of reach, and a plain hash keeps
verification cheap (no key to manage or rotate). Case, dashes and spaces are ignored.

The caller consumes the matched code atomically (`DELETE … WHERE user_id = :u AND code_hash = :h`
and require exactly one deleted row), and regenerating replaces the whole stored set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from stepguard.core.errors import VerificationFailed

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # 30 symbols: no 0 O 1 I L U
GROUPS = 3
GROUP_LENGTH = 5
CODE_LENGTH = GROUPS * GROUP_LENGTH
DEFAULT_COUNT = 10
_HASH_PREFIX = "sha256:"
_DOMAIN = b"stepguard-recovery-code\0"


@dataclass(frozen=True, slots=True)
class RecoveryUsed:
    """The stored hash that matched; the caller deletes exactly this one (single use)."""

    code_hash: str


def generate_recovery_codes(count: int = DEFAULT_COUNT) -> list[str]:
    """A fresh set of `count` distinct codes, formatted for display (lower case, dashes)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    codes: list[str] = []
    while len(codes) < count:
        code = _new_code()
        if code not in codes:
            codes.append(code)
    return codes


def hash_recovery_code(code: str) -> str:
    """`sha256:<hex>` of the normalised code (see the module docstring for why SHA-256)."""
    digest = hashlib.sha256(_DOMAIN + normalise_recovery_code(code).encode("ascii")).hexdigest()
    return _HASH_PREFIX + digest


def normalise_recovery_code(code: str) -> str:
    """Upper case without spaces or dashes; `VerificationFailed` if it cannot be a code."""
    cleaned = "".join(ch for ch in code.upper() if ch not in " -\t")
    if len(cleaned) != CODE_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        raise VerificationFailed("that is not a recovery code", code="malformed")
    return cleaned


def verify_recovery_code(*, code: str, stored_hashes: Sequence[str]) -> RecoveryUsed:
    """Find the code among the stored hashes, comparing with every one of them."""
    candidate = hash_recovery_code(code).encode("ascii")
    matched: str | None = None
    for stored in stored_hashes:
        if hmac.compare_digest(stored.encode("ascii"), candidate):
            matched = stored
    if matched is None:
        raise VerificationFailed("the recovery code is wrong or already used", code="wrong_code")
    return RecoveryUsed(code_hash=matched)


def _new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    groups = [raw[i : i + GROUP_LENGTH] for i in range(0, CODE_LENGTH, GROUP_LENGTH)]
    return "-".join(groups).lower()
