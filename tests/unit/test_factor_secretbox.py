"""Secret box: AES-256-GCM at rest for TOTP seeds, bound to user + factor, with key rotation."""

from __future__ import annotations

import base64

import pytest

from stepguard.core.errors import ConfigError, SecretBoxError, VerificationFailed
from stepguard.factors.secretbox import (
    Keyring,
    needs_reseal,
    new_key,
    open_sealed,
    reseal,
    seal,
    seed_aad,
)
from stepguard.factors.totp import new_totp_secret

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
RING = Keyring(current="k1", keys={"k1": K1})
AAD = seed_aad(user_id="alice", factor_id="totp-1")
SEED = b"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def test_round_trip_and_token_format() -> None:
    token = seal(keyring=RING, plaintext=SEED, aad=AAD)
    version, key_id, nonce, sealed = token.split(".")
    assert (version, key_id) == ("v1", "k1")
    assert len(base64.urlsafe_b64decode(nonce + "==")) == 12
    assert "=" not in token and "+" not in token and "/" not in token
    assert open_sealed(keyring=RING, token=token, aad=AAD) == SEED


def test_the_seed_is_not_visible_in_the_token() -> None:
    seed = new_totp_secret().encode()
    token = seal(keyring=RING, plaintext=seed, aad=AAD)
    assert seed not in token.encode() and base64.urlsafe_b64encode(seed)[:20] not in token.encode()


def test_every_seal_uses_a_fresh_nonce() -> None:
    tokens = {seal(keyring=RING, plaintext=SEED, aad=AAD) for _ in range(50)}
    assert len(tokens) == 50
    assert len({t.split(".")[2] for t in tokens}) == 50


@pytest.mark.parametrize(
    "other",
    [
        seed_aad(user_id="mallory", factor_id="totp-1"),
        seed_aad(user_id="alice", factor_id="totp-2"),
        seed_aad(user_id="alicetotp-1", factor_id=""),
        b"",
    ],
)
def test_a_seed_moved_to_another_user_or_factor_does_not_open(other: bytes) -> None:
    token = seal(keyring=RING, plaintext=SEED, aad=AAD)
    with pytest.raises(SecretBoxError) as caught:
        open_sealed(keyring=RING, token=token, aad=other)
    assert caught.value.code == "tampered"
    assert isinstance(caught.value, VerificationFailed)


def test_aad_is_length_prefixed_so_fields_cannot_slide() -> None:
    assert seed_aad(user_id="ab", factor_id="c") != seed_aad(user_id="a", factor_id="bc")


def test_any_flipped_byte_is_detected() -> None:
    token = seal(keyring=RING, plaintext=SEED, aad=AAD)
    head, sealed = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    for index in range(len(raw)):
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        forged = head + "." + base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
        with pytest.raises(SecretBoxError):
            open_sealed(keyring=RING, token=forged, aad=AAD)


def test_relabelling_the_key_id_does_not_open() -> None:
    ring = Keyring(current="k1", keys={"k1": K1, "k2": K1})  # same key bytes, other label
    token = seal(keyring=ring, plaintext=SEED, aad=AAD)
    relabelled = token.replace(".k1.", ".k2.", 1)
    with pytest.raises(SecretBoxError):
        open_sealed(keyring=ring, token=relabelled, aad=AAD)


def test_an_unknown_key_id_is_refused() -> None:
    token = seal(keyring=Keyring(current="k2", keys={"k2": K2}), plaintext=SEED, aad=AAD)
    with pytest.raises(SecretBoxError) as caught:
        open_sealed(keyring=RING, token=token, aad=AAD)
    assert caught.value.code == "unknown_key"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1.k1",
        "v2.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.!!!.???",
        "v1.k.1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.AAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.AAAAAAAAAAAAAAAA.AAAA",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(SecretBoxError) as caught:
        open_sealed(keyring=RING, token=token, aad=AAD)
    assert caught.value.code == "malformed"


def test_rotation_reseals_under_the_current_key() -> None:
    old_token = seal(keyring=RING, plaintext=SEED, aad=AAD)
    rotated = Keyring(current="k2", keys={"k1": K1, "k2": K2})
    assert needs_reseal(old_token, rotated)
    new_token = reseal(keyring=rotated, token=old_token, aad=AAD)
    assert new_token.split(".")[1] == "k2"
    assert not needs_reseal(new_token, rotated)
    only_new = Keyring(current="k2", keys={"k2": K2})  # the old key can now be dropped
    assert open_sealed(keyring=only_new, token=new_token, aad=AAD) == SEED
    with pytest.raises(SecretBoxError):
        open_sealed(keyring=only_new, token=old_token, aad=AAD)


def test_reseal_keeps_the_binding() -> None:
    token = seal(keyring=RING, plaintext=SEED, aad=AAD)
    rotated = Keyring(current="k2", keys={"k1": K1, "k2": K2})
    with pytest.raises(SecretBoxError):
        reseal(keyring=rotated, token=token, aad=seed_aad(user_id="mallory", factor_id="totp-1"))


def test_from_config_decodes_base64_keys() -> None:
    ring = Keyring.from_config(
        {
            "2024": base64.b64encode(K1).decode(),
            "2025": base64.urlsafe_b64encode(K2).decode().rstrip("="),
        },
        current="2025",
    )
    assert ring.keys["2024"] == K1 and ring.keys["2025"] == K2
    assert len(base64.b64decode(new_key())) == 32


def test_config_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        Keyring(current="missing", keys={"short": b"x" * 16, "bad.id": K1})
    paths = [p.path for p in caught.value.problems]
    assert paths.count("keys.short") == 1 and "keys.bad.id" in paths and "current" in paths


def test_from_config_rejects_bad_base64() -> None:
    with pytest.raises(ConfigError) as caught:
        Keyring.from_config({"k1": "not base64!!"}, current="k1")
    assert caught.value.problems[0].path == "keys.k1"


def test_keys_are_not_in_the_repr_and_cannot_be_swapped() -> None:
    assert repr(K1) not in repr(RING) and "keys" not in repr(RING)
    with pytest.raises(TypeError):
        RING.keys["k1"] = K2  # type: ignore[index]
