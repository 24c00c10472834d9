"""Password refusals: the exact reason and code a caller sees for each way a password is refused."""

from __future__ import annotations

import pytest

from stepguard.core.errors import VerificationFailed
from stepguard.factors.password import REFUSAL, hash_password, verify_password
from tests.unit.test_factor_password import FAST


def test_a_corrupt_stored_hash_gets_the_same_words_as_a_wrong_password() -> None:
    with pytest.raises(VerificationFailed) as caught:
        verify_password(stored_hash="not-a-hash", password="whatever", settings=FAST)
    assert (caught.value.code, caught.value.reason) == ("invalid_hash", REFUSAL)
    assert REFUSAL == "wrong user name or password"


@pytest.mark.parametrize(
    ("password", "code", "reason"),
    [
        ("", "empty_password", "the password is empty"),
        ("x" * 1025, "too_long", "the password is longer than 1024 characters"),
    ],
)
def test_empty_and_overlong_passwords_say_why(password: str, code: str, reason: str) -> None:
    with pytest.raises(VerificationFailed) as caught:
        hash_password(password, settings=FAST)
    assert (caught.value.code, str(caught.value)) == (code, reason)
