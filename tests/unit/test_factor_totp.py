"""TOTP factor: RFC 6238 vectors, the ±1 step window, single use per step (SECURITY.md 5 and 6)."""

from __future__ import annotations

import base64
import inspect
from concurrent.futures import ThreadPoolExecutor
from threading import Lock
from urllib.parse import parse_qs, urlsplit

import pytest

from stepguard.core.errors import ReplayDetected, VerificationFailed
from stepguard.factors.totp import (
    TotpAccepted,
    new_totp_secret,
    provisioning_uri,
    qr_svg,
    totp_at,
    verify_totp,
)

# RFC 6238 Appendix B: seeds are the ASCII strings below; T0 = 0, X = 30 s, 8 digits.
SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC6238_VECTORS = [
    (59, "sha1", "94287082"),
    (59, "sha256", "46119246"),
    (59, "sha512", "90693936"),
    (1111111109, "sha1", "07081804"),
    (1111111109, "sha256", "68084774"),
    (1111111109, "sha512", "25091201"),
    (1111111111, "sha1", "14050471"),
    (1111111111, "sha256", "67062674"),
    (1111111111, "sha512", "99943326"),
    (1234567890, "sha1", "89005924"),
    (1234567890, "sha256", "91819424"),
    (1234567890, "sha512", "93441116"),
    (2000000000, "sha1", "69279037"),
    (2000000000, "sha256", "90698825"),
    (2000000000, "sha512", "38618901"),
    (20000000000, "sha1", "65353130"),
    (20000000000, "sha256", "77737706"),
    (20000000000, "sha512", "47863826"),
]

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_700_000_015.0  # mid-step
STEP = int(NOW // 30)


def b32(seed: bytes) -> str:
    return base64.b32encode(seed).decode("ascii")


def code_for(step: int, secret: str = SECRET) -> str:
    return totp_at(secret=secret, step=step)


@pytest.mark.parametrize(("unix_time", "algorithm", "expected"), RFC6238_VECTORS)
def test_rfc6238_vectors_generate(unix_time: int, algorithm: str, expected: str) -> None:
    secret = b32(SEEDS[algorithm])
    assert totp_at(secret=secret, step=unix_time // 30, digits=8, algorithm=algorithm) == expected


@pytest.mark.parametrize(("unix_time", "algorithm", "expected"), RFC6238_VECTORS)
def test_rfc6238_vectors_verify(unix_time: int, algorithm: str, expected: str) -> None:
    accepted = verify_totp(
        secret=b32(SEEDS[algorithm]),
        code=expected,
        now=float(unix_time),
        last_step=None,
        digits=8,
        algorithm=algorithm,
    )
    assert accepted == TotpAccepted(step=unix_time // 30)


def test_rfc6238_vector_refused_with_the_wrong_algorithm() -> None:
    with pytest.raises(VerificationFailed):
        verify_totp(secret=b32(SEEDS["sha1"]), code="46119246", now=59.0, last_step=None, digits=8)


# SECURITY.md case 6: with a fixed clock, t-1, t, t+1 pass and t±2 fail.
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_steps_within_one_of_now_pass(offset: int) -> None:
    accepted = verify_totp(secret=SECRET, code=code_for(STEP + offset), now=NOW, last_step=None)
    assert accepted.step == STEP + offset


@pytest.mark.parametrize("offset", [-3, -2, 2, 3])
def test_steps_two_or_more_away_fail(offset: int) -> None:
    with pytest.raises(VerificationFailed) as caught:
        verify_totp(secret=SECRET, code=code_for(STEP + offset), now=NOW, last_step=None)
    assert caught.value.code == "wrong_code"
    assert not isinstance(caught.value, ReplayDetected)


def test_window_edges_follow_the_server_clock_exactly() -> None:
    start = STEP * 30.0
    verify_totp(secret=SECRET, code=code_for(STEP - 1), now=start + 29.999, last_step=None)
    with pytest.raises(VerificationFailed):
        verify_totp(secret=SECRET, code=code_for(STEP - 1), now=start + 30.0, last_step=None)


def test_skew_zero_accepts_only_the_current_step() -> None:
    verify_totp(secret=SECRET, code=code_for(STEP), now=NOW, last_step=None, skew=0)
    with pytest.raises(VerificationFailed):
        verify_totp(secret=SECRET, code=code_for(STEP + 1), now=NOW, last_step=None, skew=0)


def test_a_client_sent_time_is_not_a_parameter() -> None:
    names = set(inspect.signature(verify_totp).parameters)
    assert names == {"secret", "code", "now", "last_step", "digits", "period", "skew", "algorithm"}
    with pytest.raises(TypeError):
        verify_totp(  # type: ignore[call-arg]
            secret=SECRET, code=code_for(STEP), now=NOW, last_step=None, client_time=NOW
        )


def test_all_parameters_are_keyword_only() -> None:
    params = inspect.signature(verify_totp).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


# SECURITY.md case 5: each step accepted once; an older step after a newer one fails.
def test_the_same_code_twice_fails() -> None:
    code = code_for(STEP)
    first = verify_totp(secret=SECRET, code=code, now=NOW, last_step=None)
    with pytest.raises(ReplayDetected):
        verify_totp(secret=SECRET, code=code, now=NOW, last_step=first.step)


def test_an_older_step_after_a_newer_one_fails() -> None:
    newer = verify_totp(secret=SECRET, code=code_for(STEP + 1), now=NOW, last_step=None)
    with pytest.raises(ReplayDetected):
        verify_totp(secret=SECRET, code=code_for(STEP), now=NOW, last_step=newer.step)
    with pytest.raises(ReplayDetected):
        verify_totp(secret=SECRET, code=code_for(STEP - 1), now=NOW, last_step=newer.step)


def test_a_newer_step_after_an_older_one_passes() -> None:
    older = verify_totp(secret=SECRET, code=code_for(STEP - 1), now=NOW, last_step=None)
    newer = verify_totp(secret=SECRET, code=code_for(STEP), now=NOW, last_step=older.step)
    assert newer.step == STEP


def test_fifty_concurrent_submissions_with_compare_and_set_give_one_success() -> None:
    """The verifier plus the documented compare-and-set: exactly one of 50 racers wins."""
    state: dict[str, int | None] = {"last_step": None}
    lock = Lock()
    code = code_for(STEP)

    def submit() -> bool:
        try:
            accepted = verify_totp(secret=SECRET, code=code, now=NOW, last_step=state["last_step"])
        except ReplayDetected:
            return False
        with lock:  # the store's atomic "UPDATE … WHERE last_step IS NULL OR last_step < :step"
            current = state["last_step"]
            if current is not None and current >= accepted.step:
                return False
            state["last_step"] = accepted.step
            return True

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: submit(), range(50)))
    assert results.count(True) == 1
    assert state["last_step"] == STEP


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", "12345.", "-12345"])
def test_malformed_codes_fail_before_any_comparison(code: str) -> None:
    with pytest.raises(VerificationFailed) as caught:
        verify_totp(secret=SECRET, code=code, now=NOW, last_step=None)
    assert caught.value.code == "malformed"


def test_spaces_in_a_code_are_ignored() -> None:
    code = code_for(STEP)
    spaced = f" {code[:3]} {code[3:]} "
    assert verify_totp(secret=SECRET, code=spaced, now=NOW, last_step=None).step == STEP


def test_a_wrong_code_fails() -> None:
    right = code_for(STEP)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    neighbours = {code_for(STEP + k) for k in (-1, 0, 1)}
    if wrong in neighbours:  # astronomically unlikely, but keep the test honest
        pytest.skip("collision with a neighbouring step")
    with pytest.raises(VerificationFailed):
        verify_totp(secret=SECRET, code=wrong, now=NOW, last_step=None)


def test_errors_never_contain_the_code_or_the_secret() -> None:
    code = code_for(STEP + 5)
    with pytest.raises(VerificationFailed) as caught:
        verify_totp(secret=SECRET, code=code, now=NOW, last_step=None)
    assert code not in str(caught.value) and SECRET not in str(caught.value)


def test_new_secret_is_160_bits_and_unique() -> None:
    secrets_ = {new_totp_secret() for _ in range(100)}
    assert len(secrets_) == 100
    for secret in secrets_:
        assert len(base64.b32decode(secret)) == 20


def test_provisioning_uri_names_account_issuer_and_secret() -> None:
    uri = provisioning_uri(secret=SECRET, account="alice@example.com", issuer="Example Corp")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    query = parse_qs(parts.query)
    assert query["secret"] == [SECRET]
    assert query["issuer"] == ["Example Corp"]
    assert "alice%40example.com" in parts.path or "alice@example.com" in parts.path


def test_qr_svg_is_an_inline_svg() -> None:
    svg = qr_svg(provisioning_uri(secret=SECRET, account="alice", issuer="Example"))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<?xml" not in svg and "href" not in svg  # nothing fetched from elsewhere
