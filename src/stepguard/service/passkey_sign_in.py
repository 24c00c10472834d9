"""Passkey-first sign-in: a discoverable passkey with user verification signs a user in
without a username or a password (a button, or conditional UI autofill in the username field).

The ceremony is stored like every other (a challenge record, single use, 5 minutes) and bound
to the browser's pre-session: the digest of the pre-session cookie value, never the value. The
passkey that answers names its user (its credential id and user handle); the attempt is counted
before the signature is checked (reserve, then verify), against that user and this address.
"""

from __future__ import annotations

import hashlib

from stepguard.core.context import RequestContext
from stepguard.core.decision import Requirement
from stepguard.core.errors import ReplayDetected, VerificationFailed
from stepguard.core.throttle import plan_attempt
from stepguard.factors import webauthn as wa
from stepguard.service.accounts import Accounts, SignedIn
from stepguard.service.attempts import (
    abandoned,
    reserve,
    succeeded,
    unknown_subject,
)
from stepguard.service.runtime import new_id
from stepguard.service.stepup import ceremony_data, ceremony_from, passkey_event
from stepguard.storage.records import ChallengeRecord, FactorRecord, UserRecord

RULE = "passkey-sign-in"
NOT_HERE = "This passkey does not sign in to an account here. Sign in another way."


def pre_session_ref(binding: str) -> str:
    """What the store keeps of a pre-session cookie value: its digest (a DB reader learns
    nothing that would let them act as that browser)."""
    return hashlib.sha256(b"stepguard-pre-session\0" + binding.encode()).hexdigest()[:48]


class PasskeySignIn:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts, self.rt = accounts, accounts.rt

    def begin(self, pre_session: str) -> tuple[str, str]:
        """Request options (JSON) and the ceremony id, for this browser's pre-session."""
        if not pre_session:
            raise VerificationFailed("Reload the page and try again.")
        now, ref = self.rt.now(), pre_session_ref(pre_session)
        options, ceremony = wa.begin_discoverable(rp=self.rt.rp, session_id=ref, now=now)
        record = ChallengeRecord(id=new_id(), user_id="", session_id=ref,
                                 requirement=Requirement(), rule=RULE, created=now,
                                 expires=ceremony.expires)
        self.rt.store.challenges.add(record)
        self.rt.store.challenges.set_ceremony(record.id, ceremony_data(ceremony), now=now)
        return options, record.id

    def finish(self, pre_session: str, ceremony_id: str, credential_json: str,
               context: RequestContext) -> SignedIn:
        """Verify the passkey's answer and open a session (factor webauthn)."""
        ref = pre_session_ref(pre_session) if pre_session else ""
        record = self.rt.store.challenges.get(ceremony_id)
        data = self.rt.store.challenges.take_ceremony(ceremony_id, now=self.rt.now())
        if record is None or data is None or record.rule != RULE or not ref \
                or record.session_id != ref:
            raise ReplayDetected("This passkey request was already used or has expired.")
        factor, user = self._owner(credential_json)
        subject = user.id if user else unknown_subject("passkey:" + ceremony_id)
        attempt = plan_attempt(subject=subject, factor="webauthn", client_ip=context.client_ip,
                               device_id=context.device_id,
                               history=self.rt.store.history.load(subject))
        reserved = reserve(self.rt, attempt)
        try:
            if factor is None or user is None or user.disabled:
                raise VerificationFailed(NOT_HERE, code="unknown_credential")
            accepted = wa.finish_discoverable(
                rp=self.rt.rp, ceremony=ceremony_from(data), credential_json=credential_json,
                session_id=ref, owner_id=user.id, now=self.rt.now(),
                stored=wa.StoredCredential(factor.credential_id, factor.public_key,
                                           factor.sign_count))
            if not self.rt.store.factors.update_sign_count(
                    factor.id, expected_old=factor.sign_count, new=accepted.new_sign_count):
                raise ReplayDetected()
            self.rt.store.factors.mark_used(factor.id, now=self.rt.now())
            event = passkey_event(accepted, factor, now=self.rt.now())
            signed = self.accounts._open_session(user, context, event)
        except VerificationFailed:
            self.accounts._failed(user, context, reserved, factor="webauthn")
            raise
        except BaseException:
            abandoned(self.rt, reserved)
            raise
        succeeded(self.rt, reserved)
        return signed

    def _owner(self, credential_json: str) -> tuple[FactorRecord | None, UserRecord | None]:
        factor = self.rt.store.factors.by_credential_id(wa.credential_id_of(credential_json))
        if factor is None or factor.kind != "webauthn":
            return None, None
        return factor, self.rt.store.users.get(factor.user_id)
