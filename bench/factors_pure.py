"""Mean cost of one verification per factor, pure functions only (no store, no network).

Run: `python bench/factors_pure.py` from the repository root (takes a few seconds).
argon2id runs at the real OWASP parameters; it is meant to be slow, the others are not.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.support.soft_authenticator import SoftAuthenticator  # noqa: E402

from stepguard.factors.password import OWASP, hash_password, verify_password  # noqa: E402
from stepguard.factors.push import answer_push, start_push  # noqa: E402
from stepguard.factors.recovery import (  # noqa: E402
    generate_recovery_codes,
    hash_recovery_code,
    verify_recovery_code,
)
from stepguard.factors.totp import new_totp_secret, totp_at, verify_totp  # noqa: E402
from stepguard.factors.webauthn import (  # noqa: E402
    RelyingParty,
    StoredCredential,
    begin_authentication,
    begin_registration,
    finish_authentication,
    finish_registration,
)

NOW = 1_700_000_000.0


def measure(call: Callable[[], object], *, budget: float, min_runs: int = 5) -> tuple[float, int]:
    """Mean µs per call over repeated runs within `budget` seconds (at least `min_runs`)."""
    call()  # warm-up
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.fmean(samples) * 1e6, len(samples)


def password_case() -> Callable[[], object]:
    stored = hash_password("correct horse battery staple", settings=OWASP)
    return lambda: verify_password(
        stored_hash=stored, password="correct horse battery staple", settings=OWASP
    )


def totp_case() -> Callable[[], object]:
    secret = new_totp_secret()
    code = totp_at(secret=secret, step=int(NOW // 30))
    return lambda: verify_totp(secret=secret, code=code, now=NOW, last_step=None)


def recovery_case() -> Callable[[], object]:
    codes = generate_recovery_codes()
    stored = [hash_recovery_code(c) for c in codes]
    return lambda: verify_recovery_code(code=codes[-1], stored_hashes=stored)


def push_case() -> Callable[[], object]:
    push = start_push(user_id="alice", requesting_session_id="laptop", now=NOW)
    return lambda: answer_push(
        push=push,
        picked=push.number,
        approving_session_id="phone",
        approving_user_id="alice",
        now=NOW + 1,
    )


def webauthn_case() -> Callable[[], object]:
    """One signed assertion, verified repeatedly (stored count 0 keeps it acceptable)."""
    rp = RelyingParty(id="example.com", name="Example", origins=("https://example.com",))
    device = SoftAuthenticator(origin="https://example.com")
    options, ceremony = begin_registration(
        rp=rp,
        user_id="alice",
        user_name="alice",
        display_name="Alice",
        exclude_credential_ids=[],
        session_id="s",
        now=NOW,
        require_uv=True,
    )
    new = finish_registration(
        rp=rp,
        ceremony=ceremony,
        credential_json=device.create(options),
        user_id="alice",
        session_id="s",
        now=NOW,
    )
    stored = StoredCredential(new.credential_id, new.public_key, 0)
    options, ceremony = begin_authentication(
        rp=rp,
        user_id="alice",
        credential_ids=[new.credential_id],
        session_id="s",
        now=NOW,
        require_uv=True,
    )
    response = device.get(options)
    return lambda: finish_authentication(
        rp=rp,
        ceremony=ceremony,
        credential_json=response,
        user_id="alice",
        session_id="s",
        stored=stored,
        now=NOW + 1,
    )


def main() -> None:
    cases = [
        ("password (argon2id m=19456 t=2 p=1)", password_case, 3.0),
        ("TOTP (3 steps compared)", totp_case, 1.0),
        ("WebAuthn assertion (ES256)", webauthn_case, 2.0),
        ("recovery code (10 hashes)", recovery_case, 1.0),
        ("push answer (number match)", push_case, 1.0),
    ]
    print(f"{'factor':<40} {'mean µs':>12} {'runs':>8}")
    for name, build, budget in cases:
        mean, runs = measure(build(), budget=budget)
        print(f"{name:<40} {mean:>12.1f} {runs:>8}")


if __name__ == "__main__":
    main()
