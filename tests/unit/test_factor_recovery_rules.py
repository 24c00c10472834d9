"""Recovery code rules: every character of a code is random, and each refusal says exactly why."""

from __future__ import annotations

import pytest

from stepguard.core.errors import VerificationFailed
from stepguard.factors.recovery import (
    CODE_LENGTH,
    generate_recovery_codes,
    hash_recovery_code,
    verify_recovery_code,
)


def test_every_position_of_a_code_is_drawn_at_random() -> None:
    codes = [code.replace("-", "") for code in generate_recovery_codes(200)]
    assert {len(code) for code in codes} == {CODE_LENGTH}
    # 200 draws from 30 symbols: fewer than 16 distinct at one position is ~1e-51 likely.
    assert all(len({code[i] for code in codes}) > 15 for i in range(CODE_LENGTH))


def test_a_malformed_code_says_it_is_not_a_recovery_code() -> None:
    with pytest.raises(VerificationFailed) as caught:
        hash_recovery_code("abcde-fghij")
    assert (caught.value.code, str(caught.value)) == ("malformed", "that is not a recovery code")


def test_a_wrong_code_says_wrong_or_already_used() -> None:
    code, other = generate_recovery_codes(2)
    with pytest.raises(VerificationFailed) as caught:
        verify_recovery_code(code=other, stored_hashes=[hash_recovery_code(code)])
    assert (caught.value.code, str(caught.value)) == (
        "wrong_code",
        "the recovery code is wrong or already used",
    )


def test_a_count_below_one_says_so() -> None:
    with pytest.raises(ValueError) as caught:
        generate_recovery_codes(0)
    assert str(caught.value) == "count must be at least 1"
