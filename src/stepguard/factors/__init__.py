"""Factors: verifiers that take all state as arguments, raise on failure, return the change to save.

Every `verify_*` / `finish_*` / `answer_*` function here is keyword-only, reads no clock (`now` is
a parameter), stores nothing, and either raises from `stepguard.core.errors` (`VerificationFailed`,
`ReplayDetected`, `CloneDetected`, `Throttled`) or returns a small frozen value that names the
state change the caller must save atomically: a new password hash, the TOTP step used, a
WebAuthn sign count, the recovery code hash consumed, the push answer.

Why there is no SMS factor: NIST SP 800-63B rev 4 treats OTPs sent over the public switched
telephone network as a *restricted* authenticator (extra risk assessment, an alternative must
be offered, users told of the risk); SIM-swap and number-port fraud hand the code to the
attacker without touching the user's device, SS7 interception exposes it in transit, and a
typed-in code is as phishable as a password. TOTP, passkeys and push with number matching
cover the same users without those holes.
"""

from stepguard.factors.password import (
    OWASP,
    PasswordCheck,
    PasswordPool,
    PasswordSettings,
    hash_password,
    verify_dummy,
    verify_password,
)
from stepguard.factors.push import (
    DeviceKey,
    PushAnswered,
    PushRequest,
    PushSettings,
    answer_push,
    approval_message,
    check_push_rate,
    push_digest,
    start_push,
)
from stepguard.factors.recovery import (
    RecoveryUsed,
    generate_recovery_codes,
    hash_recovery_code,
    verify_recovery_code,
)
from stepguard.factors.secretbox import (
    Keyring,
    needs_reseal,
    new_key,
    open_sealed,
    reseal,
    seal,
    seed_aad,
)
from stepguard.factors.totp import (
    TotpAccepted,
    new_totp_secret,
    provisioning_uri,
    qr_svg,
    totp_at,
    verify_totp,
)
from stepguard.factors.webauthn import (
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
    user_handle,
)

__all__ = [
    "AssertionAccepted",
    "Ceremony",
    "DeviceKey",
    "Keyring",
    "NewCredential",
    "OWASP",
    "PasswordCheck",
    "PasswordPool",
    "PasswordSettings",
    "PushAnswered",
    "PushRequest",
    "PushSettings",
    "RecoveryUsed",
    "RelyingParty",
    "StoredCredential",
    "TotpAccepted",
    "answer_push",
    "approval_message",
    "begin_authentication",
    "begin_registration",
    "binding_challenge",
    "check_push_rate",
    "credential_id_of",
    "finish_authentication",
    "finish_registration",
    "generate_recovery_codes",
    "hash_password",
    "hash_recovery_code",
    "needs_reseal",
    "new_key",
    "new_totp_secret",
    "open_sealed",
    "provisioning_uri",
    "push_digest",
    "qr_svg",
    "reseal",
    "seal",
    "seed_aad",
    "start_push",
    "totp_at",
    "user_handle",
    "verify_dummy",
    "verify_password",
    "verify_recovery_code",
    "verify_totp",
]
