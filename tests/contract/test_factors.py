"""Contract: Factors and recovery codes, including the compare-and-set updates under races."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Conflict
from stepguard.storage.records import FactorRecord
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW


@pytest.fixture
def user_id(store: SqlStore) -> str:
    alice = build.user()
    store.users.add(alice)
    return alice.id


def test_add_then_get_every_field(store: SqlStore, user_id: str) -> None:
    passkey = build.factor(
        user_id,
        "webauthn",
        label="YubiKey",
        last_used=NOW + 1,
        credential_id=b"\x00\x01cred",
        public_key=b"\xa5\x01\x02",
        sign_count=7,
        data={"transports": ["usb"], "aaguid": "ad" * 16, "uv": True},
    )
    totp = build.factor(user_id, "totp", secret="sealed:v1:abc", last_step=55_000_000)
    store.factors.add(passkey)
    store.factors.add(totp)
    assert store.factors.get(passkey.id) == passkey
    assert store.factors.get(totp.id) == totp
    assert store.factors.get("missing") is None


def test_for_user_filters_by_kind(store: SqlStore, user_id: str) -> None:
    totp = build.factor(user_id, "totp")
    key = build.factor(user_id, "webauthn", credential_id=b"k1", created=NOW + 1)
    store.factors.add(totp)
    store.factors.add(key)
    assert store.factors.for_user(user_id) == (totp, key)
    assert store.factors.for_user(user_id, kind="webauthn") == (key,)
    assert store.factors.for_user("someone-else") == ()


def test_by_credential_id(store: SqlStore, user_id: str) -> None:
    key = build.factor(user_id, "webauthn", credential_id=b"\xffcred")
    store.factors.add(key)
    store.factors.add(build.factor(user_id, "totp"))
    assert store.factors.by_credential_id(b"\xffcred") == key
    assert store.factors.by_credential_id(b"other") is None
    assert store.factors.by_credential_id(b"") is None


def test_duplicate_credential_or_id_conflicts(store: SqlStore, user_id: str) -> None:
    key = build.factor(user_id, "webauthn", credential_id=b"same")
    store.factors.add(key)
    with pytest.raises(Conflict):
        store.factors.add(build.factor(user_id, "webauthn", credential_id=b"same"))
    with pytest.raises(Conflict):
        store.factors.add(build.factor(user_id, "totp", id=key.id))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        FactorRecord(id="f", user_id="u", kind="sms", created=NOW)  # type: ignore[arg-type]


def test_remove_only_the_owners_factor(store: SqlStore, user_id: str) -> None:
    totp = build.factor(user_id)
    store.factors.add(totp)
    assert not store.factors.remove(totp.id, user_id="someone-else")
    assert store.factors.remove(totp.id, user_id=user_id)
    assert store.factors.get(totp.id) is None
    assert not store.factors.remove(totp.id, user_id=user_id)


def test_mark_used(store: SqlStore, user_id: str) -> None:
    totp = build.factor(user_id)
    store.factors.add(totp)
    assert store.factors.mark_used(totp.id, now=NOW + 9)
    stored = store.factors.get(totp.id)
    assert stored is not None and stored.last_used == NOW + 9
    assert not store.factors.mark_used("missing", now=NOW)


def test_totp_step_only_moves_forward(store: SqlStore, user_id: str) -> None:
    totp = build.factor(user_id)
    store.factors.add(totp)
    assert store.factors.advance_totp_step(totp.id, 100)
    assert not store.factors.advance_totp_step(totp.id, 100)  # the same step twice
    assert not store.factors.advance_totp_step(totp.id, 99)  # an older step after a newer one
    assert store.factors.advance_totp_step(totp.id, 101)
    stored = store.factors.get(totp.id)
    assert stored is not None and stored.last_step == 101


def test_totp_step_not_for_other_kinds(store: SqlStore, user_id: str) -> None:
    key = build.factor(user_id, "webauthn", credential_id=b"c")
    store.factors.add(key)
    assert not store.factors.advance_totp_step(key.id, 1)
    assert not store.factors.advance_totp_step("missing", 1)


def test_totp_step_exactly_one_of_fifty_racers(store: SqlStore, user_id: str) -> None:
    totp = build.factor(user_id, last_step=10)
    store.factors.add(totp)
    results = build.race(50, lambda _: store.factors.advance_totp_step(totp.id, 11))
    assert results.count(True) == 1


def test_sign_count_compare_and_set(store: SqlStore, user_id: str) -> None:
    key = build.factor(user_id, "webauthn", credential_id=b"c", sign_count=5)
    store.factors.add(key)
    assert not store.factors.update_sign_count(key.id, expected_old=4, new=6)
    assert store.factors.update_sign_count(key.id, expected_old=5, new=6)
    assert not store.factors.update_sign_count(key.id, expected_old=5, new=7)
    stored = store.factors.get(key.id)
    assert stored is not None and stored.sign_count == 6


def test_sign_count_exactly_one_of_fifty_racers(store: SqlStore, user_id: str) -> None:
    key = build.factor(user_id, "webauthn", credential_id=b"c", sign_count=5)
    store.factors.add(key)
    results = build.race(
        50, lambda i: store.factors.update_sign_count(key.id, expected_old=5, new=6 + i)
    )
    assert results.count(True) == 1


def test_recovery_codes_single_use_and_regeneration_voids_old_set(
    store: SqlStore, user_id: str
) -> None:
    store.factors.replace_recovery_codes(user_id, ["h1", "h2", "h2"], now=NOW)
    assert [c.code_hash for c in store.factors.recovery_codes(user_id)] == ["h1", "h2"]
    assert store.factors.use_recovery_code(user_id, "h1", now=NOW + 1)
    assert not store.factors.use_recovery_code(user_id, "h1", now=NOW + 2)
    assert not store.factors.use_recovery_code("other-user", "h2", now=NOW + 2)
    used = {c.code_hash: c.used_at for c in store.factors.recovery_codes(user_id)}
    assert used == {"h1": NOW + 1, "h2": None}

    store.factors.replace_recovery_codes(user_id, ["h3"], now=NOW + 3)
    assert not store.factors.use_recovery_code(user_id, "h2", now=NOW + 4)
    assert store.factors.use_recovery_code(user_id, "h3", now=NOW + 4)


def test_recovery_code_exactly_one_of_fifty_racers(store: SqlStore, user_id: str) -> None:
    store.factors.replace_recovery_codes(user_id, ["code"], now=NOW)
    results = build.race(
        50, lambda i: store.factors.use_recovery_code(user_id, "code", now=NOW + i)
    )
    assert results.count(True) == 1
