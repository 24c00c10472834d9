"""WebAuthn factor rules beyond SECURITY.md case 9 (see test_factor_webauthn.py).

This file pins down the words and codes of each refusal, the five-minute timeout the
browser is told, unbound ceremonies by default, passkey sign-in without a username, the
backup flags reported, credential lists of more than one id, a bound ceremony whose
challenge cannot be recomputed, and relying-party origin problems one by one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from stepguard.core.errors import ConfigError, Problem
from stepguard.factors.webauthn import (
    CEREMONY_TTL,
    AssertionAccepted,
    Ceremony,
    RelyingParty,
    StoredCredential,
    begin_authentication,
    begin_discoverable,
    binding_challenge,
    finish_discoverable,
)
from tests.support.soft_authenticator import SoftAuthenticator, b64url_decode
from tests.unit import test_factor_webauthn
from tests.unit.test_factor_webauthn import (
    DIGEST,
    NOW,
    RP,
    SESSION,
    USER,
    begin_auth,
    begin_reg,
    finish_auth,
    finish_reg,
    refused,
    register,
)

authenticator = test_factor_webauthn.authenticator  # the same software authenticator (a fixture)


def refused_saying(call: Callable[[], object], code: str, reason: str) -> None:
    error = refused(call, code)
    assert (error.reason, str(error)) == (reason, reason)


def rp_problems(rp_id: str, *origins: str) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        RelyingParty(id=rp_id, name="Example", origins=origins)
    return caught.value.problems


def finish_discover(
    ceremony: Ceremony, response: str, stored: StoredCredential
) -> AssertionAccepted:
    return finish_discoverable(
        rp=RP,
        ceremony=ceremony,
        credential_json=response,
        session_id=SESSION,
        owner_id=USER,
        stored=stored,
        now=NOW + 10,
    )


# What the browser is told, and what the ceremony holds.
def test_the_browser_is_given_five_minutes_for_every_ceremony() -> None:
    for options in (
        begin_reg()[0],
        begin_auth(StoredCredential(b"cred", b"key", 0))[0],
        begin_discoverable(rp=RP, session_id=SESSION, now=NOW)[0],
    ):
        assert json.loads(options)["timeout"] == CEREMONY_TTL * 1000 == 300_000


def test_ceremonies_are_unbound_unless_a_binding_is_given() -> None:
    _, ceremony = begin_authentication(
        rp=RP,
        user_id=USER,
        credential_ids=[b"cred"],
        session_id=SESSION,
        now=NOW,
        require_uv=True,
    )
    assert (ceremony.binding, len(ceremony.challenge)) == ("", 32)
    assert begin_reg()[1].binding == ""
    assert begin_discoverable(rp=RP, session_id=SESSION, now=NOW)[1].binding == ""


def test_a_short_nonce_is_refused_in_plain_words() -> None:
    with pytest.raises(ValueError, match=r"^the nonce must be 16 bytes$"):
        binding_challenge(b"short", DIGEST)


# Passkey sign-in without a username.
def test_a_passkey_signs_in_without_a_username(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_discoverable(rp=RP, session_id=SESSION, now=NOW)
    parsed = json.loads(options)
    assert not parsed.get("allowCredentials") and parsed["userVerification"] == "required"
    assert (ceremony.kind, ceremony.user_id, ceremony.require_uv) == ("discover", "", True)
    accepted = finish_discover(ceremony, authenticator.get(options), stored)
    assert (accepted.credential_id, accepted.uv) == (stored.credential_id, True)


def test_a_passkey_sign_in_without_a_user_handle_is_refused(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_discoverable(rp=RP, session_id=SESSION, now=NOW)
    response = json.loads(authenticator.get(options))
    del response["response"]["userHandle"]
    refused_saying(
        lambda: finish_discover(ceremony, json.dumps(response), stored),
        "wrong_user",
        "this passkey did not say whose it is",
    )


# Backup flags: a synced passkey says so at registration and at each sign-in.
@pytest.mark.parametrize("synced", [False, True])
def test_the_backup_flags_are_reported_as_sent(synced: bool) -> None:
    authenticator = SoftAuthenticator(origin="https://example.com", synced=synced)
    options, ceremony = begin_reg()
    new = finish_reg(ceremony, authenticator.create(options))
    assert (new.backed_up, new.multi_device) == (synced, synced)
    stored = StoredCredential(new.credential_id, new.public_key, new.sign_count)
    options, ceremony = begin_auth(stored)
    accepted = finish_auth(ceremony, authenticator.get(options), stored)
    assert (accepted.backed_up, accepted.backup_eligible) == (synced, synced)


# Credential lists with more than one id.
def test_a_passkey_anywhere_in_the_exclude_list_is_refused(
    authenticator: SoftAuthenticator,
) -> None:
    options, ceremony = begin_reg()
    response = authenticator.create(options)
    credential_id = b64url_decode(json.loads(response)["rawId"])
    excluded = replace(ceremony, credential_ids=(credential_id, b"another-key"))
    refused_saying(
        lambda: finish_reg(excluded, response),
        "duplicate_credential",
        "this passkey is already registered",
    )


def test_a_passkey_anywhere_in_the_allow_list_is_accepted(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_authentication(
        rp=RP,
        user_id=USER,
        credential_ids=[stored.credential_id, b"another-key"],
        session_id=SESSION,
        now=NOW,
        require_uv=True,
    )
    accepted = finish_auth(ceremony, authenticator.get(options), stored)
    assert accepted.credential_id == stored.credential_id


# Each refusal says which check failed, in words an operator can read.
@pytest.mark.parametrize(
    ("knobs", "code", "reason"),
    [
        ({"user": "mallory"}, "wrong_user", "the challenge was issued to another user"),
        ({"session": "sess-other"}, "wrong_session", "the challenge was issued to another session"),
        ({"now": NOW + CEREMONY_TTL}, "expired", "the challenge has expired"),
    ],
)
def test_a_ceremony_refusal_names_the_check(
    authenticator: SoftAuthenticator, knobs: dict, code: str, reason: str
) -> None:
    options, ceremony = begin_reg()
    response = authenticator.create(options)
    refused_saying(lambda: finish_reg(ceremony, response, **knobs), code, reason)


def test_a_registration_ceremony_cannot_finish_an_authentication_in_plain_words(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, _ = begin_auth(stored)
    _, registration = begin_reg()
    refused_saying(
        lambda: finish_auth(registration, authenticator.get(options), stored),
        "wrong_kind",
        "the challenge was issued for another ceremony",
    )


@pytest.mark.parametrize(
    ("knobs", "code", "reason"),
    [
        (
            {"origin": "https://evil.example"},
            "wrong_origin",
            "the response came from an origin this site does not accept",
        ),
        (
            {"rp_id": "evil.example"},
            "wrong_rp_id",
            "the response was made for another site (rpIdHash)",
        ),
        ({"client_type": "webauthn.create"}, "wrong_type", "the response is of the wrong type"),
        ({"challenge": b"\x00" * 32}, "wrong_challenge", "the response answers another challenge"),
        (
            {"uv": False},
            "uv_required",
            "the authenticator did not verify the user (PIN or biometric required)",
        ),
        ({"up": False}, "up_required", "the user was not present at the authenticator"),
    ],
)
def test_a_refused_assertion_names_the_check(
    authenticator: SoftAuthenticator, knobs: dict, code: str, reason: str
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, require_uv=code == "uv_required")
    response = authenticator.get(options, **knobs)
    refused_saying(lambda: finish_auth(ceremony, response, stored), code, reason)


def test_a_malformed_response_is_refused_in_plain_words(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    _, ceremony = begin_auth(stored)
    refused_saying(
        lambda: finish_auth(ceremony, "not json", stored),
        "invalid_response",
        "the passkey response is malformed",
    )


def test_a_credential_refusal_names_the_check(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    other = register(authenticator, user="bob")
    options, ceremony = begin_auth(stored)
    refused_saying(
        lambda: finish_auth(
            ceremony, authenticator.get(options, credential_id=other.credential_id), stored
        ),
        "unknown_credential",
        "this passkey is not registered for you",
    )
    options, ceremony = begin_auth(other)  # alice's ceremony naming bob's credential
    refused_saying(
        lambda: finish_auth(ceremony, authenticator.get(options), other),
        "wrong_user",
        "this passkey belongs to another user",
    )


def test_a_binding_refusal_names_the_check(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, binding=DIGEST)
    response = authenticator.get(options)
    refused_saying(
        lambda: finish_auth(ceremony, response, stored, expected_binding="ab" * 32),
        "wrong_binding",
        "the approval was for another transaction",
    )
    swapped = replace(ceremony, binding="ab" * 32)
    refused_saying(
        lambda: finish_auth(swapped, response, stored),
        "wrong_binding",
        "the challenge does not cover the transaction",
    )


@pytest.mark.parametrize(
    "tampered",
    [
        {"binding": "not hex"},
        {"binding": "not hex", "challenge": b""},  # nothing to compare is not a match
        {"challenge": b"XXXX"},  # too short to hold the nonce
        {"challenge": b"\x00" * 15},
    ],
)
def test_a_bound_ceremony_that_cannot_be_recomputed_is_refused(
    authenticator: SoftAuthenticator, tampered: dict
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, binding=DIGEST)
    response = authenticator.get(options)
    refused_saying(
        lambda: finish_auth(replace(ceremony, **tampered), response, stored),
        "wrong_binding",
        "the challenge does not cover the transaction",
    )


# Relying-party configuration: every problem, worded, at `origins`.
def test_a_relying_party_without_origins_is_one_problem() -> None:
    assert rp_problems("example.com") == [
        Problem("", "origins", "at least one origin is required")
    ]


@pytest.mark.parametrize(
    ("origin", "messages"),
    [
        ("http://example.com", ["'http://example.com' must be https://host[:port]"]),
        ("https://example.com?next=1", ["'https://example.com?next=1' must be https://host[:port]"]),
        ("https://example.com#top", ["'https://example.com#top' must be https://host[:port]"]),
        ("https://evil.example", ["'https://evil.example' is not within the RP id 'example.com'"]),
        # never what a browser sends, so no ceremony could ever match: refused, not kept
        ("https://example.com/", ["'https://example.com/' must be https://host[:port]"]),
        ("https://Example.com", ["'https://Example.com' must be https://host[:port]"]),
        ("https://u@example.com", ["'https://u@example.com' must be https://host[:port]"]),
        (
            "http://evil.example",
            [
                "'http://evil.example' must be https://host[:port]",
                "'http://evil.example' is not within the RP id 'example.com'",
            ],
        ),
    ],
)
def test_a_bad_origin_is_named_with_each_thing_wrong(origin: str, messages: list[str]) -> None:
    assert rp_problems("example.com", origin) == [
        Problem("", "origins", message) for message in messages
    ]


@pytest.mark.parametrize("rp_id", ["example.com", "intranet", "xxxx"])
def test_an_origin_without_a_host_is_within_no_rp_id(rp_id: str) -> None:
    assert rp_problems(rp_id, "https://") == [
        Problem("", "origins", f"'https://' is not within the RP id {rp_id!r}")
    ]
