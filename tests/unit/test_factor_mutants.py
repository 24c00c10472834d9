"""Factor rules that only the slow HTTP tests held before: the exact bytes a push device signs
(approval and enrolment: the device app builds them on its own, so one byte off and no answer
verifies), the words of a replayed TOTP code, a registered passkey that must be discoverable,
and a passkey sign-in ceremony that names no credential. Found by `make mutate` on
`factors/`."""

from __future__ import annotations

import json

import pytest

from stepguard.core.errors import ReplayDetected
from stepguard.factors.push import PushRequest, approval_message, enrolment_message
from stepguard.factors.totp import verify_totp
from stepguard.factors.webauthn import begin_discoverable
from stepguard.service.stepup import ceremony_data, ceremony_from
from tests.unit.test_factor_totp import NOW as TOTP_NOW
from tests.unit.test_factor_totp import SECRET, STEP, code_for
from tests.unit.test_factor_webauthn import NOW, RP, SESSION, begin_reg


def test_an_approval_signs_its_fields_one_per_line() -> None:
    push = PushRequest(id="p-1", user_id="u", requesting_session_id="s", number=42,
                       options=(17, 42, 88), nonce="n0nce", digest="d1g", created=1.0,
                       expires=2.0)
    assert approval_message(push=push, picked=42) == (
        b"stepguard-push-approval-v1\np-1\nn0nce\nd1g\n42")


def test_an_enrolment_signs_its_fields_one_per_line() -> None:
    assert enrolment_message(enrolment_id="e-1", nonce="n0nce") == (
        b"stepguard-push-enrolment-v1\ne-1\nn0nce")


def test_a_totp_code_of_a_step_already_used_is_refused_as_used() -> None:
    with pytest.raises(ReplayDetected) as refused:
        verify_totp(secret=SECRET, code=code_for(STEP), now=TOTP_NOW, last_step=STEP)
    assert (str(refused.value), refused.value.code) == ("this code was already used", "replay")


def test_a_registered_passkey_must_be_discoverable() -> None:
    """Resident key required: the passkey can later sign in without a username."""
    options, _ = begin_reg()
    selection = json.loads(options)["authenticatorSelection"]
    assert (selection["residentKey"], selection["requireResidentKey"]) == ("required", True)


def test_a_passkey_sign_in_ceremony_names_no_credential_and_survives_storage() -> None:
    _, ceremony = begin_discoverable(rp=RP, session_id=SESSION, now=NOW)
    assert ceremony.credential_ids == ()
    assert ceremony_from(ceremony_data(ceremony)) == ceremony
