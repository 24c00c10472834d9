"""Push devices: enrol a browser's device key (behind a fresh proof), list and remove devices.

A push device is a factor of kind `push` whose `public_key` is the SPKI DER of a key pair the
browser made with WebCrypto (private key non-extractable, kept in IndexedDB) and whose
`data["alg"]` names the algorithm (ES256 or EdDSA). Enrolment is a single-use ceremony like a
passkey's: `begin` stores a nonce on a short-lived challenge of this session; `finish` takes it
once and accepts the key only with a signature over that nonce (proof of possession). Like any
factor change it needs a fresh proof (`Accounts.require_fresh`) and ends the user's other
sessions. Removal is `Accounts.remove_factor` (fresh aal2 proof).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from stepguard.core.decision import Requirement
from stepguard.core.errors import VerificationFailed
from stepguard.factors import push as push_factor
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import new_id
from stepguard.storage.records import ChallengeRecord, FactorRecord, SessionRecord

ENROLMENT_TTL = 300.0  # seconds to finish adding a device
ENROLMENT_RULE = "enrol-push-device"


@dataclass(frozen=True)
class DeviceEnrolment:
    """What the browser signs to prove it holds the new key."""

    enrolment_id: str
    nonce: str


class PushDevices:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.rt = accounts.rt

    def begin(self, session: SessionRecord) -> DeviceEnrolment:
        self.accounts.require_fresh(session)
        now, nonce = self.rt.now(), secrets.token_urlsafe(32)
        record = ChallengeRecord(
            id=new_id(),
            user_id=session.user_id,
            session_id=session.id,
            requirement=Requirement(),
            rule=ENROLMENT_RULE,
            created=now,
            expires=now + ENROLMENT_TTL,
        )
        self.rt.store.challenges.add(record)
        self.rt.store.challenges.set_ceremony(record.id, {"push_enrolment": nonce}, now=now)
        return DeviceEnrolment(record.id, nonce)

    def finish(
        self,
        session: SessionRecord,
        *,
        enrolment_id: str,
        algorithm: str,
        public_key: bytes,
        signature: bytes,
        label: str,
        user_agent: str,
    ) -> FactorRecord:
        """Store the device key if it signed this session's enrolment nonce (single use)."""
        self.accounts.require_fresh(session)
        now = self.rt.now()
        record = self.rt.store.challenges.get(enrolment_id)
        if record is None or record.rule != ENROLMENT_RULE or record.session_id != session.id:
            raise VerificationFailed("Start adding the device again.", code="no_enrolment")
        data = self.rt.store.challenges.take_ceremony(enrolment_id, now=now)
        nonce = str((data or {}).get("push_enrolment", ""))
        if not nonce:
            raise VerificationFailed("Start adding the device again.", code="no_enrolment")
        push_factor.check_device_key(algorithm=algorithm, public_key=public_key)
        push_factor.verify_device_signature(
            algorithm=algorithm,
            public_key=public_key,
            message=push_factor.enrolment_message(enrolment_id=enrolment_id, nonce=nonce),
            signature=signature,
        )
        device = FactorRecord(
            id=new_id(),
            user_id=session.user_id,
            kind="push",
            label=label.strip()[:60] or "Push device",
            created=now,
            public_key=public_key,
            data={"alg": algorithm, "user_agent": user_agent[:300]},
        )
        self.rt.store.factors.add(device)
        self.accounts._factor_changed(session, "push", "enrolled")
        return device
