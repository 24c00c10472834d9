"""TOTP rules at their edges: step 0 and times before the epoch, the exact error messages, the
exact enrolment URI, and the QR code's symbol (regular QR, error level M, 4 px, quiet zone 2).
"""

from __future__ import annotations

import re

import pytest

from stepguard.core.errors import VerificationFailed
from stepguard.factors.totp import provisioning_uri, qr_svg, totp_at, verify_totp
from tests.unit.test_factor_totp import NOW, SECRET, STEP, code_for


def svg_width(svg: str) -> int:
    match = re.match(r'<svg width="(\d+)" height="\1"', svg)
    assert match, svg[:80]
    return int(match.group(1))


def qr_width(version: int) -> int:
    """Pixels of a regular QR symbol of `version` at 4 px per module with a 2-module border."""
    return (17 + 4 * version + 2 * 2) * 4


# The time steps.
def test_step_zero_is_a_step_like_any_other() -> None:
    assert verify_totp(secret=SECRET, code=code_for(0), now=15.0, last_step=None).step == 0
    assert verify_totp(secret=SECRET, code=code_for(0), now=45.0, last_step=None).step == 0


def test_a_clock_before_the_epoch_is_in_step_minus_one() -> None:
    # Steps are floor(now / period): at -1 s the window is steps -2..0, of which only 0 exists.
    assert verify_totp(secret=SECRET, code=code_for(0), now=-1.0, last_step=None).step == 0
    with pytest.raises(VerificationFailed) as caught:
        verify_totp(secret=SECRET, code=code_for(1), now=-1.0, last_step=None)
    assert caught.value.code == "wrong_code"


def test_a_negative_step_has_no_code() -> None:
    with pytest.raises(ValueError, match="^a time step is never negative$"):
        totp_at(secret=SECRET, step=-1)


# The messages a user sees.
def test_a_wrong_code_says_wrong_or_expired() -> None:
    with pytest.raises(VerificationFailed) as caught:
        verify_totp(secret=SECRET, code=code_for(STEP + 5), now=NOW, last_step=None)
    assert (caught.value.code, str(caught.value)) == ("wrong_code", "the code is wrong or expired")


def test_a_malformed_code_says_how_many_digits() -> None:
    with pytest.raises(VerificationFailed) as caught:
        verify_totp(secret=SECRET, code="1234567", now=NOW, last_step=None, digits=8)
    assert (caught.value.code, str(caught.value)) == ("malformed", "the code must be 8 digits")


# Enrolment.
def test_the_default_uri_is_six_digits_every_thirty_seconds() -> None:
    uri = provisioning_uri(secret=SECRET, account="alice@example.com", issuer="Example Corp")
    assert uri == (
        "otpauth://totp/Example%20Corp:alice%40example.com"
        f"?secret={SECRET}&issuer=Example%20Corp"
    )


def test_the_uri_carries_other_digits_and_periods() -> None:
    uri = provisioning_uri(
        secret=SECRET, account="alice@example.com", issuer="Example Corp", digits=8, period=60
    )
    assert uri.endswith("&issuer=Example%20Corp&digits=8&period=60")


def test_the_enrolment_qr_is_version_7_at_error_level_m_4px_and_a_2_module_border() -> None:
    # 111 bytes of URI fit version 6 at level L but need version 7 at level M.
    uri = provisioning_uri(secret=SECRET, account="alice@example.com", issuer="Example Corp")
    assert svg_width(qr_svg(uri)) == qr_width(7)


def test_short_text_still_makes_a_regular_qr_not_a_micro_qr() -> None:
    assert svg_width(qr_svg("a")) == qr_width(1)
