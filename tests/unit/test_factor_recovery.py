"""Recovery codes: ≥ 64 bits, hashed, single use, regeneration voids the old set (case 8)."""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from threading import Lock

import pytest

from stepguard.core.errors import VerificationFailed
from stepguard.factors.recovery import (
    ALPHABET,
    CODE_LENGTH,
    RecoveryUsed,
    generate_recovery_codes,
    hash_recovery_code,
    verify_recovery_code,
)

FORMAT = re.compile(r"[a-z2-9]{5}-[a-z2-9]{5}-[a-z2-9]{5}")


def test_ten_codes_by_default_each_in_groups() -> None:
    codes = generate_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(FORMAT.fullmatch(code) for code in codes)


def test_each_code_carries_at_least_64_bits() -> None:
    assert CODE_LENGTH * math.log2(len(ALPHABET)) >= 64


def test_alphabet_has_no_look_alikes() -> None:
    assert not set("0O1IL") & set(ALPHABET)
    assert len(set(ALPHABET)) == len(ALPHABET)


def test_codes_use_the_whole_alphabet() -> None:
    seen = {ch for code in generate_recovery_codes(200) for ch in code.replace("-", "").upper()}
    assert seen == set(ALPHABET)


def test_a_stored_code_verifies_and_names_its_hash() -> None:
    codes = generate_recovery_codes()
    stored = [hash_recovery_code(c) for c in codes]
    used = verify_recovery_code(code=codes[3], stored_hashes=stored)
    assert used == RecoveryUsed(code_hash=stored[3])


@pytest.mark.parametrize(
    "variant",
    [
        str.upper,
        lambda c: c.replace("-", ""),
        lambda c: c.replace("-", " "),
        lambda c: f"  {c.upper()}\t",
    ],
)
def test_case_dashes_and_spaces_are_ignored(variant) -> None:
    code = generate_recovery_codes(1)[0]
    assert hash_recovery_code(variant(code)) == hash_recovery_code(code)


def test_hash_is_not_the_code() -> None:
    code = generate_recovery_codes(1)[0]
    hashed = hash_recovery_code(code)
    assert hashed.startswith("sha256:") and len(hashed) == len("sha256:") + 64
    assert code.replace("-", "").upper() not in hashed.upper()


def test_a_wrong_code_fails() -> None:
    stored = [hash_recovery_code(c) for c in generate_recovery_codes()]
    other = generate_recovery_codes(1)[0]
    with pytest.raises(VerificationFailed) as caught:
        verify_recovery_code(code=other, stored_hashes=stored)
    assert caught.value.code == "wrong_code"
    assert other not in str(caught.value)


@pytest.mark.parametrize("code", ["", "abcde-fghij", "00000-00000-00000", "abcde-fghij-klmnoq"])
def test_malformed_codes_fail(code: str) -> None:
    stored = [hash_recovery_code(c) for c in generate_recovery_codes()]
    with pytest.raises(VerificationFailed) as caught:
        verify_recovery_code(code=code, stored_hashes=stored)
    assert caught.value.code == "malformed"


def test_an_empty_set_refuses_everything() -> None:
    with pytest.raises(VerificationFailed):
        verify_recovery_code(code=generate_recovery_codes(1)[0], stored_hashes=[])


def test_single_use_once_the_caller_removes_the_hash() -> None:
    codes = generate_recovery_codes()
    stored = [hash_recovery_code(c) for c in codes]
    used = verify_recovery_code(code=codes[0], stored_hashes=stored)
    remaining = [h for h in stored if h != used.code_hash]
    with pytest.raises(VerificationFailed):
        verify_recovery_code(code=codes[0], stored_hashes=remaining)
    verify_recovery_code(code=codes[1], stored_hashes=remaining)


def test_single_use_under_concurrency_with_an_atomic_delete() -> None:
    codes = generate_recovery_codes()
    stored = {hash_recovery_code(c) for c in codes}
    lock = Lock()

    def redeem() -> bool:
        try:
            used = verify_recovery_code(code=codes[0], stored_hashes=sorted(stored))
        except VerificationFailed:
            return False
        with lock:  # the store's "DELETE … WHERE code_hash = :h" with exactly one row deleted
            if used.code_hash not in stored:
                return False
            stored.remove(used.code_hash)
            return True

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda _: redeem(), range(64)))
    assert results.count(True) == 1
    assert len(stored) == 9


def test_regenerating_voids_the_old_set() -> None:
    old = generate_recovery_codes()
    new = generate_recovery_codes()
    stored = [hash_recovery_code(c) for c in new]  # the caller replaces the whole set
    assert not set(old) & set(new)
    for code in old:
        with pytest.raises(VerificationFailed):
            verify_recovery_code(code=code, stored_hashes=stored)


def test_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        generate_recovery_codes(0)
