"""Secret box stored format: a token sealed today opens in every later release, parsing is strict.

Pins the exact bytes of `seed_aad`, a known-answer token (fixed key and nonce), the base64url
alphabet without padding, the tag-only minimum, the key-id check, and the reason and code
each refusal carries.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stepguard.core.errors import SecretBoxError
from stepguard.factors import secretbox
from stepguard.factors.secretbox import Keyring, open_sealed, seal, seed_aad
from tests.unit.test_factor_secretbox import AAD, K1, RING

PLAINTEXT = b"JBSWY3DPEHPK3PXP"
NONCE = bytes.fromhex("000000000000fbf000000017")  # base64url "AAAAAAAA-_AAAAAX"
# AES-256-GCM(K1, NONCE, PLAINTEXT, aad=b"stepguard-secretbox\0v1\0k1\0" + AAD), sealed in v1.
VECTOR = "v1.k1.AAAAAAAA-_AAAAAX.izyyKsRB38GjUGNLgHsVmESpot7FvyjTvYHU1Rrd0mA"
EMPTY_VECTOR = "v1.k1.AAAAAAAA-_AAAAAX.JVIMh-ewLl85XzsFg9U9_g"  # empty plaintext: the tag only
MALFORMED = "the sealed secret is malformed"


def _refusal(token: str) -> tuple[str, str]:
    with pytest.raises(SecretBoxError) as caught:
        open_sealed(keyring=RING, token=token, aad=AAD)
    return caught.value.code, caught.value.reason


@pytest.fixture
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretbox, "secrets", SimpleNamespace(token_bytes=lambda _: NONCE))


def test_seed_aad_is_three_length_prefixed_utf8_fields() -> None:
    assert AAD == (
        b"\x00\x00\x00\x17stepguard-factor-secret\x00\x00\x00\x05alice\x00\x00\x00\x06totp-1"
    )
    assert seed_aad(user_id="zoë", factor_id="") == (
        b"\x00\x00\x00\x17stepguard-factor-secret\x00\x00\x00\x04zo\xc3\xab\x00\x00\x00\x00"
    )


def test_a_token_sealed_by_v1_still_opens() -> None:
    assert open_sealed(keyring=RING, token=VECTOR, aad=AAD) == PLAINTEXT


@pytest.mark.usefixtures("fixed_nonce")
def test_seal_writes_exactly_the_v1_layout() -> None:
    assert seal(keyring=RING, plaintext=PLAINTEXT, aad=AAD) == VECTOR
    assert seal(keyring=RING, plaintext=b"", aad=AAD) == EMPTY_VECTOR


def test_an_empty_secret_is_a_well_formed_tag_only_token() -> None:
    assert open_sealed(keyring=RING, token=EMPTY_VECTOR, aad=AAD) == b""
    assert _refusal(EMPTY_VECTOR[:-2]) == ("malformed", MALFORMED)  # 15 bytes: less than a tag


@pytest.mark.parametrize(
    "token",
    [
        VECTOR.replace("-", "+"),  # standard alphabet in the nonce
        VECTOR.replace("_", "/"),
        VECTOR + "=",  # padding
    ],
)
def test_only_unpadded_base64url_is_accepted(token: str) -> None:
    assert _refusal(token) == ("malformed", MALFORMED)


@pytest.mark.parametrize("key_id", ["k!1", "", "k" * 65])
def test_a_key_id_outside_the_allowed_pattern_is_malformed(key_id: str) -> None:
    assert _refusal(VECTOR.replace(".k1.", f".{key_id}.", 1)) == ("malformed", MALFORMED)


@pytest.mark.parametrize("token", ["v1.k1", "v1.k1.!!!.???", "v1.k1.AAAA.AAAAAAAAAAAAAAAAAAAAAA"])
def test_every_malformed_token_says_so(token: str) -> None:
    assert _refusal(token) == ("malformed", MALFORMED)


def test_a_moved_seed_is_refused_as_tampered() -> None:
    other = seed_aad(user_id="mallory", factor_id="totp-1")
    with pytest.raises(SecretBoxError) as caught:
        open_sealed(keyring=RING, token=VECTOR, aad=other)
    assert (caught.value.code, caught.value.reason) == (
        "tampered",
        "the sealed secret was altered or belongs elsewhere",
    )


def test_an_unknown_key_says_which_problem_it_is() -> None:
    ring = Keyring(current="k2", keys={"k2": K1})
    with pytest.raises(SecretBoxError) as caught:
        open_sealed(keyring=ring, token=VECTOR, aad=AAD)
    assert (caught.value.code, str(caught.value)) == (
        "unknown_key",
        "sealed with a key this keyring does not hold",
    )
