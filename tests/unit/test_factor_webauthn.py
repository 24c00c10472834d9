"""WebAuthn factor: SECURITY.md case 9, every item, against real create()/get() JSON.

Responses come from `tests/support/soft_authenticator.py` (a software ES256 authenticator) and
from a browser-captured assertion published in py_webauthn's test suite.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stepguard.core.errors import CloneDetected, ConfigError, VerificationFailed
from stepguard.core.grant import binding_digest
from stepguard.core.levels import Level
from stepguard.factors.webauthn import (
    CEREMONY_TTL,
    AssertionAccepted,
    Ceremony,
    NewCredential,
    RelyingParty,
    StoredCredential,
    begin_authentication,
    begin_registration,
    binding_challenge,
    credential_id_of,
    finish_authentication,
    finish_registration,
    proof_of,
    user_handle,
)
from tests.support.soft_authenticator import SoftAuthenticator, b64url, b64url_decode

RP = RelyingParty(id="example.com", name="Example", origins=("https://example.com",))
NOW = 1_700_000_000.0
USER, SESSION = "alice", "sess-alice-1"


@pytest.fixture
def authenticator() -> SoftAuthenticator:
    return SoftAuthenticator(origin="https://example.com")


def begin_reg(
    *,
    user: str = USER,
    session: str = SESSION,
    require_uv: bool = True,
    exclude: tuple[bytes, ...] = (),
) -> tuple[str, Ceremony]:
    return begin_registration(
        rp=RP,
        user_id=user,
        user_name=f"{user}@example.com",
        display_name=user.title(),
        exclude_credential_ids=exclude,
        session_id=session,
        now=NOW,
        require_uv=require_uv,
    )


def finish_reg(
    ceremony: Ceremony,
    response: str,
    *,
    user: str = USER,
    session: str = SESSION,
    now: float = NOW + 10,
) -> NewCredential:
    return finish_registration(
        rp=RP,
        ceremony=ceremony,
        credential_json=response,
        user_id=user,
        session_id=session,
        now=now,
    )


def register(authenticator: SoftAuthenticator, user: str = USER) -> StoredCredential:
    options, ceremony = begin_reg(user=user)
    new = finish_reg(ceremony, authenticator.create(options), user=user)
    return StoredCredential(new.credential_id, new.public_key, new.sign_count)


def begin_auth(
    stored: StoredCredential,
    *,
    user: str = USER,
    session: str = SESSION,
    require_uv: bool = True,
    binding: str = "",
) -> tuple[str, Ceremony]:
    return begin_authentication(
        rp=RP,
        user_id=user,
        credential_ids=[stored.credential_id],
        session_id=session,
        now=NOW,
        require_uv=require_uv,
        binding=binding,
    )


def finish_auth(
    ceremony: Ceremony,
    response: str,
    stored: StoredCredential,
    *,
    user: str = USER,
    session: str = SESSION,
    now: float = NOW + 10,
    **kw,
):
    return finish_authentication(
        rp=RP,
        ceremony=ceremony,
        credential_json=response,
        user_id=user,
        session_id=session,
        stored=stored,
        now=now,
        **kw,
    )


def refused(call, code: str) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as caught:
        call()
    assert caught.value.code == code, caught.value
    return caught.value


# Registration.
def test_registration_options_and_ceremony(authenticator: SoftAuthenticator) -> None:
    options, ceremony = begin_reg(exclude=(b"old-key",))
    parsed = json.loads(options)
    assert parsed["rp"] == {"id": "example.com", "name": "Example"}
    assert b64url_decode(parsed["user"]["id"]) == user_handle(USER)
    assert b64url_decode(parsed["challenge"]) == ceremony.challenge
    assert len(ceremony.challenge) >= 16
    assert parsed["authenticatorSelection"]["userVerification"] == "required"
    assert parsed["attestation"] == "none"
    assert [b64url_decode(c["id"]) for c in parsed["excludeCredentials"]] == [b"old-key"]
    assert (ceremony.kind, ceremony.user_id, ceremony.session_id) == ("register", USER, SESSION)
    assert (ceremony.created, ceremony.expires) == (NOW, NOW + 300)


def test_challenges_are_fresh_each_time() -> None:
    assert len({begin_reg()[1].challenge for _ in range(20)}) == 20


def test_registration_returns_the_credential_to_save(authenticator: SoftAuthenticator) -> None:
    options, ceremony = begin_reg()
    new = finish_reg(ceremony, authenticator.create(options))
    held = authenticator.credentials[new.credential_id]
    assert new.public_key == held.cose_public_key()
    assert (new.sign_count, new.uv) == (0, True)
    assert new.aaguid == "adce0002-35bc-c60a-648b-0b25f1f05503"
    assert new.transports == ("internal", "hybrid")


@pytest.mark.parametrize(
    ("knobs", "code"),
    [
        ({"origin": "https://evil.example"}, "wrong_origin"),
        ({"origin": "http://example.com"}, "wrong_origin"),
        ({"rp_id": "evil.example"}, "wrong_rp_id"),
        ({"client_type": "webauthn.get"}, "wrong_type"),
        ({"credential_type": "password"}, "wrong_type"),
        ({"uv": False}, "uv_required"),
        ({"up": False}, "up_required"),
        ({"challenge": b"\x00" * 32}, "wrong_challenge"),
    ],
)
def test_registration_refusals(authenticator: SoftAuthenticator, knobs: dict, code: str) -> None:
    options, ceremony = begin_reg()
    response = authenticator.create(options, **knobs)
    refused(lambda: finish_reg(ceremony, response), code)


def test_registration_without_uv_when_not_required(authenticator: SoftAuthenticator) -> None:
    options, ceremony = begin_reg(require_uv=False)
    assert json.loads(options)["authenticatorSelection"]["userVerification"] == "preferred"
    assert finish_reg(ceremony, authenticator.create(options, uv=False)).uv is False


def test_registration_ceremony_bound_to_user_session_and_time(
    authenticator: SoftAuthenticator,
) -> None:
    options, ceremony = begin_reg()
    response = authenticator.create(options)
    refused(lambda: finish_reg(ceremony, response, user="mallory"), "wrong_user")
    refused(lambda: finish_reg(ceremony, response, session="sess-other"), "wrong_session")
    refused(lambda: finish_reg(ceremony, response, now=NOW + CEREMONY_TTL), "expired")
    finish_reg(ceremony, response, now=NOW + CEREMONY_TTL - 1)


def test_an_already_registered_credential_is_refused(authenticator: SoftAuthenticator) -> None:
    options, ceremony = begin_reg()
    response = authenticator.create(options)
    credential_id = b64url_decode(json.loads(response)["rawId"])
    excluded = replace(ceremony, credential_ids=(credential_id,))
    refused(lambda: finish_reg(excluded, response), "duplicate_credential")


def test_registration_ceremony_cannot_finish_an_authentication(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_reg()
    response = authenticator.get(
        json.dumps({"challenge": b64url(ceremony.challenge), "rpId": "example.com"})
    )
    refused(lambda: finish_auth(ceremony, response, stored), "wrong_kind")


# Authentication: the happy path.
def test_authentication_returns_the_new_sign_count(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    parsed = json.loads(options)
    assert parsed["rpId"] == "example.com" and parsed["userVerification"] == "required"
    assert [b64url_decode(c["id"]) for c in parsed["allowCredentials"]] == [stored.credential_id]
    response = authenticator.get(options)
    assert credential_id_of(response) == stored.credential_id
    accepted = finish_auth(ceremony, response, stored)
    assert (accepted.credential_id, accepted.new_sign_count, accepted.uv) == (
        stored.credential_id,
        1,
        True,
    )
    assert accepted.binding == ""


def test_zero_counters_are_accepted(authenticator: SoftAuthenticator) -> None:
    authenticator.counter_step = 0  # many passkeys always report 0
    stored = register(authenticator)
    for _ in range(2):
        options, ceremony = begin_auth(stored)
        assert finish_auth(ceremony, authenticator.get(options), stored).new_sign_count == 0


# SECURITY.md case 9, item by item.
def test_wrong_origin(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    for origin in (
        "https://evil.example",
        "https://example.com.evil.example",
        "https://sub.example.com",
        "http://example.com",
    ):
        options, ceremony = begin_auth(stored)
        response = authenticator.get(options, origin=origin)
        refused(
            lambda response=response, ceremony=ceremony: finish_auth(ceremony, response, stored),
            "wrong_origin",
        )


def test_wrong_rp_id_hash(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options, rp_id="evil.example")
    refused(lambda: finish_auth(ceremony, response, stored), "wrong_rp_id")


@pytest.mark.parametrize(
    "knobs",
    [
        {"client_type": "webauthn.create"},
        {"client_type": "payment.get"},
        {"credential_type": "public-key-2"},
    ],
)
def test_wrong_type(authenticator: SoftAuthenticator, knobs: dict) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options, **knobs)
    refused(lambda: finish_auth(ceremony, response, stored), "wrong_type")


def test_replayed_challenge(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options)
    accepted = finish_auth(ceremony, response, stored)
    saved = replace(stored, sign_count=accepted.new_sign_count)
    # The store consumed that ceremony; the replay can only meet a newer one ...
    _, next_ceremony = begin_auth(saved)
    refused(lambda: finish_auth(next_ceremony, response, saved), "wrong_challenge")
    # ... and even against the old ceremony the counter no longer moves forward.
    with pytest.raises(CloneDetected):
        finish_auth(ceremony, response, saved)


def test_a_response_to_another_challenge(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    other_options, _ = begin_auth(stored)
    response = authenticator.get(
        options, challenge=b64url_decode(json.loads(other_options)["challenge"])
    )
    refused(lambda: finish_auth(ceremony, response, stored), "wrong_challenge")


def test_challenge_issued_to_another_user(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, mallory_ceremony = begin_auth(stored, user="mallory")
    response = authenticator.get(options)
    refused(lambda: finish_auth(mallory_ceremony, response, stored), "wrong_user")


def test_challenge_issued_to_another_session(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, session="sess-attacker")
    response = authenticator.get(options)
    refused(lambda: finish_auth(ceremony, response, stored), "wrong_session")


def test_a_passkey_of_another_user(authenticator: SoftAuthenticator) -> None:
    bob_key = register(authenticator, user="bob")
    options, ceremony = begin_auth(bob_key)  # alice's ceremony naming bob's credential
    response = authenticator.get(options)
    refused(lambda: finish_auth(ceremony, response, bob_key), "wrong_user")


def test_expired_challenge(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options)
    refused(lambda: finish_auth(ceremony, response, stored, now=NOW + 300), "expired")
    refused(lambda: finish_auth(ceremony, response, stored, now=NOW + 10_000), "expired")
    finish_auth(ceremony, response, stored, now=NOW + 299)


def test_uv_zero_where_required(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, require_uv=True)
    response = authenticator.get(options, uv=False)
    refused(lambda: finish_auth(ceremony, response, stored), "uv_required")


def test_uv_zero_accepted_and_reported_when_not_required(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, require_uv=False)
    assert finish_auth(ceremony, authenticator.get(options, uv=False), stored).uv is False


def test_up_zero_is_refused(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, require_uv=False)
    response = authenticator.get(options, up=False, uv=False)
    refused(lambda: finish_auth(ceremony, response, stored), "up_required")


@pytest.mark.parametrize(("stored_count", "sent_count"), [(5, 4), (5, 5), (5, 0), (1, 0)])
def test_sign_counter_going_backwards_is_a_clone(
    authenticator: SoftAuthenticator, stored_count: int, sent_count: int
) -> None:
    stored = replace(register(authenticator), sign_count=stored_count)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options, sign_count=sent_count)
    with pytest.raises(CloneDetected):
        finish_auth(ceremony, response, stored)


def test_counter_moving_forward_is_fine(authenticator: SoftAuthenticator) -> None:
    stored = replace(register(authenticator), sign_count=5)
    options, ceremony = begin_auth(stored)
    assert (
        finish_auth(ceremony, authenticator.get(options, sign_count=6), stored).new_sign_count == 6
    )


def test_a_forged_counter_without_a_valid_signature_is_not_a_clone_signal(
    authenticator: SoftAuthenticator,
) -> None:
    stored = replace(register(authenticator), sign_count=5)
    options, ceremony = begin_auth(stored)
    forged = authenticator.get(
        options, sign_count=1, signing_key=ec.generate_private_key(ec.SECP256R1())
    )
    refused(lambda: finish_auth(ceremony, forged, stored), "bad_signature")


def test_unknown_credential(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    other = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options, credential_id=other.credential_id)
    refused(lambda: finish_auth(ceremony, response, stored), "unknown_credential")
    # The stored row matches, but the ceremony did not allow that credential.
    refused(lambda: finish_auth(ceremony, response, other), "unknown_credential")
    # No allow list (discoverable credentials): the response must name the stored credential.
    open_ceremony = replace(ceremony, credential_ids=())
    refused(lambda: finish_auth(open_ceremony, response, stored), "unknown_credential")


def test_signature_by_another_key(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options, signing_key=ec.generate_private_key(ec.SECP256R1()))
    refused(lambda: finish_auth(ceremony, response, stored), "bad_signature")


@pytest.mark.parametrize("garbage", ["", "{}", "[]", "not json", '{"id": "x", "rawId": "y"}'])
def test_malformed_responses(authenticator: SoftAuthenticator, garbage: str) -> None:
    stored = register(authenticator)
    _, ceremony = begin_auth(stored)
    refused(lambda: finish_auth(ceremony, garbage, stored), "invalid_response")


def test_client_text_never_reaches_the_error_message(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options, origin="https://evil.example\nforged log line")
    error = refused(lambda: finish_auth(ceremony, response, stored), "wrong_origin")
    assert "evil" not in str(error) and "\n" not in str(error)


# Transaction binding: the signature covers what the user saw.
DIGEST = binding_digest(
    method="POST",
    path="/payments",
    fields=["amount", "payee"],
    attributes={"amount": 5000, "payee": "ACME"},
)


def test_binding_challenge_shape() -> None:
    nonce = bytes(range(16))
    challenge = binding_challenge(nonce, DIGEST)
    assert len(challenge) == 48 and challenge[:16] == nonce
    assert challenge != binding_challenge(nonce, "00" * 32)
    with pytest.raises(ValueError):
        binding_challenge(b"short", DIGEST)
    with pytest.raises(ValueError):
        binding_challenge(nonce, "not hex")


def test_bound_authentication(authenticator: SoftAuthenticator) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, binding=DIGEST)
    sent = b64url_decode(json.loads(options)["challenge"])
    assert sent == ceremony.challenge == binding_challenge(sent[:16], DIGEST)
    accepted = finish_auth(ceremony, authenticator.get(options), stored, expected_binding=DIGEST)
    assert accepted.binding == DIGEST


def test_bound_approval_does_not_cover_another_transaction(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, binding=DIGEST)
    response = authenticator.get(options)
    other = binding_digest(
        method="POST",
        path="/payments",
        fields=["amount", "payee"],
        attributes={"amount": 50000, "payee": "EVIL"},
    )
    refused(
        lambda: finish_auth(ceremony, response, stored, expected_binding=other), "wrong_binding"
    )
    refused(lambda: finish_auth(ceremony, response, stored, expected_binding=""), "wrong_binding")


def test_a_ceremony_whose_binding_was_swapped_is_refused(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored, binding=DIGEST)
    response = authenticator.get(options)
    other = "ab" * 32
    swapped = replace(ceremony, binding=other)
    refused(lambda: finish_auth(swapped, response, stored, expected_binding=other), "wrong_binding")


def test_an_unbound_approval_cannot_serve_a_bound_request(
    authenticator: SoftAuthenticator,
) -> None:
    stored = register(authenticator)
    options, ceremony = begin_auth(stored)
    response = authenticator.get(options)
    refused(
        lambda: finish_auth(ceremony, response, stored, expected_binding=DIGEST), "wrong_binding"
    )


# Relying-party configuration.
@pytest.mark.parametrize(
    "origins",
    [
        (),
        ("http://example.com",),
        ("https://evil.example",),
        ("https://notexample.com",),
        ("https://example.com/path",),
    ],
)
def test_relying_party_refuses_bad_origins(origins: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        RelyingParty(id="example.com", name="Example", origins=origins)


def test_relying_party_accepts_subdomains_and_localhost() -> None:
    RelyingParty(
        id="example.com",
        name="E",
        origins=("https://example.com", "https://login.example.com:8443"),
    )
    RelyingParty(id="localhost", name="Dev", origins=("http://localhost:8000",))


# A real browser payload (py_webauthn tests/test_verify_authentication_response.py, EC2 key):
# rp id "localhost", origin http://localhost:5000, flags UP only, counter 78.
CAPTURED_CREDENTIAL_ID = (
    "EDx9FfAbp4obx6oll2oC4-CZuDidRVV4gZhxC529ytlnqHyqCStDUwfNdm1SNHAe3X5KvueWQdAX3x9R1a2b9Q"
)
CAPTURED_ASSERTION = json.dumps(
    {
        "id": CAPTURED_CREDENTIAL_ID,
        "rawId": CAPTURED_CREDENTIAL_ID,
        "response": {
            "authenticatorData": "SZYN5YgOjGh0NBcPZHZgW4_krrmihjLHmVzzuoMdl2MBAAAATg",
            "clientDataJSON": (
                "eyJjaGFsbGVuZ2UiOiJ4aTMwR1BHQUZZUnhWRHBZMXNNMTBEYUx6VlFHNjZudi1fN1JVYXpIMHZJMll2Rzh"
                "MWWdERW52TjVmWlpOVnV2RUR1TWk5dGUzVkxxYjQyTjBma0xHQSIsImNsaWVudEV4dGVuc2lvbnMiOnt9LC"
                "JoYXNoQWxnb3JpdGhtIjoiU0hBLTI1NiIsIm9yaWdpbiI6Imh0dHA6Ly9sb2NhbGhvc3Q6NTAwMCIsInR5c"
                "GUiOiJ3ZWJhdXRobi5nZXQifQ"
            ),
            "signature": (
                "MEUCIGisVZOBapCWbnJJvjelIzwpixxIwkjCCb5aCHafQu68AiEA88v-2pJNNApPFwAKFiNuf82-2hBxYW5k"
                "GwVweeoxCwo"
            ),
        },
        "type": "public-key",
        "clientExtensionResults": {},
    }
)
CAPTURED_CHALLENGE = b64url_decode(
    "xi30GPGAFYRxVDpY1sM10DaLzVQG66nv-_7RUazH0vI2YvG8LYgDEnvN5fZZNVuvEDuMi9te3VLqb42N0fkLGA"
)
CAPTURED_PUBLIC_KEY = b64url_decode(
    "pQECAyYgASFYIIeDTe-gN8A-zQclHoRnGFWN8ehM1b7yAsa8I8KIvmplIlgg4nFGT5px8o6gpPZZhO01wdy9crDSA_Ng"
    "tkx0vGpvPHI"
)
LOCAL_RP = RelyingParty(id="localhost", name="Dev", origins=("http://localhost:5000",))


def captured(
    *, require_uv: bool = False, sign_count: int = 77
) -> tuple[Ceremony, StoredCredential]:
    ceremony = Ceremony(
        challenge=CAPTURED_CHALLENGE,
        kind="authenticate",
        user_id=USER,
        session_id=SESSION,
        created=NOW,
        expires=NOW + 300,
        require_uv=require_uv,
    )
    stored = StoredCredential(
        b64url_decode(CAPTURED_CREDENTIAL_ID), CAPTURED_PUBLIC_KEY, sign_count
    )
    return ceremony, stored


def finish_captured(ceremony: Ceremony, stored: StoredCredential):
    return finish_authentication(
        rp=LOCAL_RP,
        ceremony=ceremony,
        credential_json=CAPTURED_ASSERTION,
        user_id=USER,
        session_id=SESSION,
        stored=stored,
        now=NOW + 1,
    )


def test_captured_browser_assertion_verifies() -> None:
    accepted = finish_captured(*captured())
    assert accepted.new_sign_count == 78 and accepted.uv is False


def test_captured_browser_assertion_replayed_is_a_clone() -> None:
    with pytest.raises(CloneDetected):
        finish_captured(*captured(sign_count=78))


def test_captured_browser_assertion_without_uv_where_required() -> None:
    ceremony, stored = captured(require_uv=True)
    refused(lambda: finish_captured(ceremony, stored), "uv_required")


def test_captured_browser_assertion_on_another_site() -> None:
    ceremony, stored = captured()
    other = RelyingParty(id="example.com", name="E", origins=("https://example.com",))
    refused(
        lambda: finish_authentication(
            rp=other,
            ceremony=ceremony,
            credential_json=CAPTURED_ASSERTION,
            user_id=USER,
            session_id=SESSION,
            stored=stored,
            now=NOW + 1,
        ),
        "wrong_origin",
    )


def test_user_handle_is_opaque() -> None:
    handle = user_handle("alice@example.com")
    assert len(handle) == 32 and b"alice" not in handle
    assert handle == user_handle("alice@example.com") != user_handle("bob@example.com")
    assert base64.b64encode(handle)  # bytes, ready for the options JSON


@pytest.mark.parametrize(
    ("registered", "asserted", "uv", "level", "amr"),
    [
        (False, False, True, Level.AAL3, ("hwk", "user")),
        (True, False, True, Level.AAL2, ("swk", "user")),  # BE seen at registration
        (False, True, True, Level.AAL2, ("swk", "user")),  # BE seen now
        (False, False, False, Level.AAL2, ("hwk", "user")),  # device-bound, not verified
    ],
)
def test_a_synced_passkey_proves_aal2_at_most(registered: bool, asserted: bool, uv: bool,
                                              level: Level, amr: tuple[str, ...]) -> None:
    accepted = AssertionAccepted(credential_id=b"c", new_sign_count=1, uv=uv, binding="",
                                 backed_up=asserted, backup_eligible=asserted)
    assert proof_of(accepted, registered_backup_eligible=registered) == (level, amr)
