"""Keyring configuration: every problem is reported with its exact path and message, and key
text must be strict base64 (stray characters are an error, not silently dropped)."""

from __future__ import annotations

import base64

import pytest

from stepguard.core.errors import ConfigError, Problem
from stepguard.factors.secretbox import Keyring
from tests.unit.test_factor_secretbox import K1


def test_bad_keys_and_a_missing_current_id_are_reported_word_for_word() -> None:
    with pytest.raises(ConfigError) as caught:
        Keyring(current="missing", keys={"short": b"x" * 16, "bad.id": K1})
    assert caught.value.problems == [
        Problem("", "keys.short", "key must be 32 bytes"),
        Problem("", "keys.bad.id", "key id must match [A-Za-z0-9_-]{1,64}"),
        Problem("", "current", "the current key id is not in the keyring"),
    ]


def test_key_text_that_is_not_base64_is_reported_word_for_word() -> None:
    with pytest.raises(ConfigError) as caught:
        Keyring.from_config({"k1": "not base64!!"}, current="k1")
    assert caught.value.problems == [Problem("", "keys.k1", "is not valid base64")]
    assert str(caught.value) == "<input> at keys.k1: is not valid base64"


@pytest.mark.parametrize("stray", ["!", " ", "\n"])
def test_a_stray_character_inside_a_key_is_refused(stray: str) -> None:
    text = base64.b64encode(K1).decode()
    with pytest.raises(ConfigError):
        Keyring.from_config({"k1": text[:10] + stray + text[10:]}, current="k1")
