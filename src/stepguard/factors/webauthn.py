"""WebAuthn / passkey factor (Level 3 relying-party checks) on top of py_webauthn.

A `Ceremony` is the server half of one registration or authentication: its challenge and who it
was issued to (user, session, kind), valid for 5 minutes. Single use is the store's job: it must
CONSUME the ceremony atomically when the response arrives (delete-and-return in one statement)
and pass the consumed value here; a second response for the same challenge then finds nothing.

Transaction binding (DESIGN §6): for a bound grant, `begin_authentication(binding=<hex digest>)`
makes the challenge `nonce(16) ‖ SHA-256("stepguard-bind\\0" ‖ nonce ‖ digest)`, so the
authenticator's signature covers the transaction the user was shown; `finish_authentication`
recomputes it from the ceremony's binding and, when given, checks the request's `expected_binding`.

The sign counter is checked here, after the signature: a counter that does not grow while either
value is non-zero raises `CloneDetected`. The caller saves `new_sign_count` with a compare-and-set.

Assurance (`proof_of`): NIST SP 800-63B rev 4 counts a syncable authenticator — a passkey whose
backup-eligible (BE) flag is set, copied between devices by its provider — at AAL2 at most; only
a device-bound credential (BE clear at registration and in this assertion) verified by its user
(UV) reaches AAL3, with `amr` `hwk`; a synced one proves `swk` (RFC 8176: a software-secured key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from stepguard.core.errors import CloneDetected, ConfigError, Problem, VerificationFailed
from stepguard.core.levels import Level

CeremonyKind = Literal["register", "authenticate", "discover"]
CEREMONY_TTL = 300.0  # seconds (SECURITY.md: a WebAuthn challenge expires in 5 min)
CHALLENGE_BYTES = 32
NONCE_BYTES = 16
BIND_DOMAIN = b"stepguard-bind\0"
_USER_HANDLE_DOMAIN = b"stepguard-user-handle\0"
T = TypeVar("T")

# Plain-words reasons per refusal; no client-sent text ever goes into a message.
_REASONS = {
    "wrong_origin": "the response came from an origin this site does not accept",
    "wrong_rp_id": "the response was made for another site (rpIdHash)",
    "wrong_type": "the response is of the wrong type",
    "wrong_challenge": "the response answers another challenge",
    "uv_required": "the authenticator did not verify the user (PIN or biometric required)",
    "up_required": "the user was not present at the authenticator",
    "bad_signature": "the authenticator's signature does not verify",
    "invalid_response": "the passkey response is malformed",
}
_MESSAGE_CODES = (
    ("origin", "wrong_origin"),
    ("rp id hash", "wrong_rp_id"),
    ("data type", "wrong_type"),
    ("unexpected type", "wrong_type"),
    ("credential type", "wrong_type"),
    ("challenge", "wrong_challenge"),
    ("user verification", "uv_required"),
    ("not present", "up_required"),
    ("signature", "bad_signature"),
)


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """This site as WebAuthn sees it: the RP id (a domain) and the exact origins allowed."""

    id: str
    name: str
    origins: tuple[str, ...]

    def __post_init__(self) -> None:
        problems = [p for origin in self.origins for p in _origin_problems(self.id, origin)]
        if not self.origins:
            problems.append(Problem("", "origins", "at least one origin is required"))
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True, slots=True)
class Ceremony:
    """One pending registration or authentication; store it, then consume it exactly once."""

    challenge: bytes
    kind: CeremonyKind
    user_id: str
    session_id: str
    created: float
    expires: float
    require_uv: bool
    credential_ids: tuple[bytes, ...] = ()  # allowed (authenticate) or excluded (register)
    binding: str = ""  # hex transaction digest folded into the challenge, "" when unbound


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A verified registration: save it for the user."""

    credential_id: bytes
    public_key: bytes  # COSE-encoded
    sign_count: int
    aaguid: str
    uv: bool
    transports: tuple[str, ...]
    backed_up: bool
    multi_device: bool


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """What the store holds about one of the user's credentials."""

    credential_id: bytes
    public_key: bytes
    sign_count: int


@dataclass(frozen=True, slots=True)
class AssertionAccepted:
    """A verified authentication: save `new_sign_count` (compare-and-set) and grant."""

    credential_id: bytes
    new_sign_count: int
    uv: bool
    binding: str
    backed_up: bool
    backup_eligible: bool = False  # BE flag: a syncable (multi-device) passkey


def user_handle(user_id: str) -> bytes:
    """The opaque WebAuthn user handle for a user: a hash, so no identifier leaves in clear."""
    return hashlib.sha256(_USER_HANDLE_DOMAIN + user_id.encode("utf-8")).digest()


def binding_challenge(nonce: bytes, binding: str) -> bytes:
    """`nonce ‖ SHA-256(b"stepguard-bind\\0" ‖ nonce ‖ bytes.fromhex(binding))` (48 bytes)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"the nonce must be {NONCE_BYTES} bytes")
    digest = hashlib.sha256(BIND_DOMAIN + nonce + bytes.fromhex(binding)).digest()
    return nonce + digest


def begin_registration(
    *,
    rp: RelyingParty,
    user_id: str,
    user_name: str,
    display_name: str,
    exclude_credential_ids: Sequence[bytes],
    session_id: str,
    now: float,
    require_uv: bool,
) -> tuple[str, Ceremony]:
    """Options for `navigator.credentials.create()` (JSON) and the ceremony to store."""
    ceremony = _new_ceremony(
        "register",
        secrets.token_bytes(CHALLENGE_BYTES),
        user_id,
        session_id,
        now,
        require_uv,
        tuple(exclude_credential_ids),
    )
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_name=user_name,
        user_id=user_handle(user_id),
        user_display_name=display_name,
        challenge=ceremony.challenge,
        timeout=int(CEREMONY_TTL * 1000),
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            # Discoverable, so the passkey can also sign in without a username.
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=_uv_requirement(require_uv),
        ),
        exclude_credentials=_descriptors(ceremony.credential_ids),
    )
    return options_to_json(options), ceremony


def finish_registration(
    *,
    rp: RelyingParty,
    ceremony: Ceremony,
    credential_json: str,
    user_id: str,
    session_id: str,
    now: float,
) -> NewCredential:
    """Verify a `create()` response against its ceremony; raise `VerificationFailed` if refused."""
    _check_ceremony(ceremony, "register", user_id, session_id, now)
    credential: RegistrationCredential = _refusing(
        lambda: parse_registration_credential_json(credential_json)
    )
    verified = _refusing(
        lambda: verify_registration_response(
            credential=credential,
            expected_challenge=ceremony.challenge,
            expected_rp_id=rp.id,
            expected_origin=list(rp.origins),
            require_user_verification=ceremony.require_uv,
        )
    )
    if _contains(ceremony.credential_ids, verified.credential_id):
        raise VerificationFailed("this passkey is already registered", code="duplicate_credential")
    return NewCredential(
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=verified.aaguid,
        uv=verified.user_verified,
        transports=tuple(t.value for t in credential.response.transports or ()),
        backed_up=verified.credential_backed_up,
        multi_device=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
    )


def begin_authentication(
    *,
    rp: RelyingParty,
    user_id: str,
    credential_ids: Sequence[bytes],
    session_id: str,
    now: float,
    require_uv: bool,
    binding: str = "",
) -> tuple[str, Ceremony]:
    """Options for `navigator.credentials.get()` (JSON) and the ceremony to store."""
    if binding:
        challenge = binding_challenge(secrets.token_bytes(NONCE_BYTES), binding)
    else:
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
    ceremony = _new_ceremony(
        "authenticate",
        challenge,
        user_id,
        session_id,
        now,
        require_uv,
        tuple(credential_ids),
        binding.lower(),
    )
    options = generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=int(CEREMONY_TTL * 1000),
        allow_credentials=_descriptors(ceremony.credential_ids),
        user_verification=_uv_requirement(require_uv),
    )
    return options_to_json(options), ceremony


def credential_id_of(credential_json: str) -> bytes:
    """The credential id a `get()` response names, for looking up the `StoredCredential`."""
    credential: AuthenticationCredential = _refusing(
        lambda: parse_authentication_credential_json(credential_json)
    )
    return credential.raw_id


def finish_authentication(
    *,
    rp: RelyingParty,
    ceremony: Ceremony,
    credential_json: str,
    user_id: str,
    session_id: str,
    stored: StoredCredential,
    now: float,
    expected_binding: str | None = None,
) -> AssertionAccepted:
    """Verify a `get()` response; `CloneDetected` when the sign counter did not grow.

    `stored` must be one of `user_id`'s own credentials, looked up by `credential_id_of`.
    """
    _check_ceremony(ceremony, "authenticate", user_id, session_id, now)
    _check_binding(ceremony, expected_binding)
    credential: AuthenticationCredential = _refusing(
        lambda: parse_authentication_credential_json(credential_json)
    )
    _check_credential(ceremony, credential, stored, user_id)
    return _verified_assertion(rp, ceremony, credential, stored)


def _verified_assertion(rp: RelyingParty, ceremony: Ceremony,
                        credential: AuthenticationCredential,
                        stored: StoredCredential) -> AssertionAccepted:
    """The signature, challenge, origin, RP id and UV checks, then the sign counter."""
    verified = _refusing(
        lambda: verify_authentication_response(
            credential=credential,
            expected_challenge=ceremony.challenge,
            expected_rp_id=rp.id,
            expected_origin=list(rp.origins),
            credential_public_key=stored.public_key,
            credential_current_sign_count=0,  # the counter is checked below, after the signature
            require_user_verification=ceremony.require_uv,
        )
    )
    _check_counter(verified.new_sign_count, stored.sign_count)
    return AssertionAccepted(
        credential_id=verified.credential_id,
        new_sign_count=verified.new_sign_count,
        uv=verified.user_verified,
        binding=ceremony.binding,
        backed_up=verified.credential_backed_up,
        backup_eligible=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
    )


DEVICE_BOUND_AMR = ("hwk", "user")
SYNCED_AMR = ("swk", "user")


def proof_of(accepted: AssertionAccepted, *,
             registered_backup_eligible: bool) -> tuple[Level, tuple[str, ...]]:
    """The level and `amr` one accepted assertion proves: AAL3 (`hwk`) only for a device-bound
    credential with user verification; a syncable one (BE set now or when it was registered:
    the flag never changes for a real credential, so either says "synced") is AAL2 (`swk`)."""
    synced = accepted.backup_eligible or registered_backup_eligible
    if synced or not accepted.uv:
        return Level.AAL2, SYNCED_AMR if synced else DEVICE_BOUND_AMR
    return Level.AAL3, DEVICE_BOUND_AMR


def begin_discoverable(*, rp: RelyingParty, session_id: str, now: float) -> tuple[str, Ceremony]:
    """Options for a passkey sign-in without a username (a button, or conditional UI in the
    username field): no credential list, user verification required, so the passkey alone is
    a multi-factor proof. The ceremony belongs to the browser's pre-session (`session_id`),
    not to a user: the passkey that answers names its user."""
    challenge = secrets.token_bytes(CHALLENGE_BYTES)
    ceremony = _new_ceremony("discover", challenge, "", session_id, now, True, ())
    options = generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=int(CEREMONY_TTL * 1000),
        allow_credentials=[],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return options_to_json(options), ceremony


def finish_discoverable(
    *,
    rp: RelyingParty,
    ceremony: Ceremony,
    credential_json: str,
    session_id: str,
    owner_id: str,
    stored: StoredCredential,
    now: float,
) -> AssertionAccepted:
    """Verify a passkey sign-in. `stored` is the credential the response names (looked up by
    `credential_id_of`) and `owner_id` its user; the response must carry that user's handle
    (a discoverable credential always does) and user verification."""
    _check_ceremony(ceremony, "discover", "", session_id, now)
    credential: AuthenticationCredential = _refusing(
        lambda: parse_authentication_credential_json(credential_json)
    )
    if credential.response.user_handle is None:
        raise VerificationFailed("this passkey did not say whose it is", code="wrong_user")
    _check_credential(ceremony, credential, stored, owner_id)
    return _verified_assertion(rp, ceremony, credential, stored)  # the ceremony requires UV


def _new_ceremony(
    kind: CeremonyKind,
    challenge: bytes,
    user_id: str,
    session_id: str,
    now: float,
    require_uv: bool,
    credential_ids: tuple[bytes, ...],
    binding: str = "",
) -> Ceremony:
    return Ceremony(
        challenge=challenge,
        kind=kind,
        user_id=user_id,
        session_id=session_id,
        created=now,
        expires=now + CEREMONY_TTL,
        require_uv=require_uv,
        credential_ids=credential_ids,
        binding=binding,
    )


def _check_ceremony(
    ceremony: Ceremony, kind: CeremonyKind, user_id: str, session_id: str, now: float
) -> None:
    if ceremony.kind != kind:
        raise VerificationFailed("the challenge was issued for another ceremony", code="wrong_kind")
    if not _same(ceremony.user_id, user_id):
        raise VerificationFailed("the challenge was issued to another user", code="wrong_user")
    if not _same(ceremony.session_id, session_id):
        raise VerificationFailed(
            "the challenge was issued to another session", code="wrong_session"
        )
    if now >= ceremony.expires:
        raise VerificationFailed("the challenge has expired", code="expired")


def _check_binding(ceremony: Ceremony, expected_binding: str | None) -> None:
    if expected_binding is not None and not _same(ceremony.binding, expected_binding.lower()):
        raise VerificationFailed("the approval was for another transaction", code="wrong_binding")
    if not ceremony.binding:
        return
    nonce = ceremony.challenge[:NONCE_BYTES]
    try:
        expected = binding_challenge(nonce, ceremony.binding)
    except ValueError:  # a binding that is not a digest: nothing can cover it
        expected = None
    if expected is None or not hmac.compare_digest(expected, ceremony.challenge):
        raise VerificationFailed(
            "the challenge does not cover the transaction", code="wrong_binding"
        )


def _check_credential(
    ceremony: Ceremony,
    credential: AuthenticationCredential,
    stored: StoredCredential,
    user_id: str,
) -> None:
    known = hmac.compare_digest(credential.raw_id, stored.credential_id)
    if not known or (
        ceremony.credential_ids and not _contains(ceremony.credential_ids, credential.raw_id)
    ):
        raise VerificationFailed(
            "this passkey is not registered for you", code="unknown_credential"
        )
    handle = credential.response.user_handle
    if handle is not None and not hmac.compare_digest(handle, user_handle(user_id)):
        raise VerificationFailed("this passkey belongs to another user", code="wrong_user")


def _check_counter(new: int, stored: int) -> None:
    if (new > 0 or stored > 0) and new <= stored:
        raise CloneDetected()


def _refusing(call: Callable[[], T]) -> T:
    """Run a py_webauthn step; translate its refusal into `VerificationFailed` with our code."""
    try:
        return call()
    except (
        WebAuthnException,
        InvalidSignature,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
    ) as exc:
        code = _code_for(str(exc))
        raise VerificationFailed(_REASONS[code], code=code) from exc


def _code_for(message: str) -> str:
    lowered = message.lower()
    return next((code for words, code in _MESSAGE_CODES if words in lowered), "invalid_response")


def _uv_requirement(require_uv: bool) -> UserVerificationRequirement:
    if require_uv:
        return UserVerificationRequirement.REQUIRED
    return UserVerificationRequirement.PREFERRED


def _descriptors(ids: Sequence[bytes]) -> list[PublicKeyCredentialDescriptor]:
    return [PublicKeyCredentialDescriptor(id=credential_id) for credential_id in ids]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _contains(ids: Sequence[bytes], wanted: bytes) -> bool:
    found = False
    for candidate in ids:
        found |= hmac.compare_digest(candidate, wanted)
    return found


def _origin_problems(rp_id: str, origin: str) -> list[Problem]:
    parts = urlsplit(origin)
    host = (parts.hostname or "").lower()
    secure = parts.scheme == "https" or (parts.scheme == "http" and host == "localhost")
    problems = []
    # Written exactly as a browser sends it (py_webauthn compares origins as strings): no path,
    # not even "/", no user, no query or fragment, the host in lower case.
    plain = parts.netloc == parts.netloc.lower() and "@" not in parts.netloc
    if not secure or not plain or parts.path or parts.query or parts.fragment:
        problems.append(Problem("", "origins", f"{origin!r} must be https://host[:port]"))
    if host != rp_id.lower() and not host.endswith("." + rp_id.lower()):
        problems.append(Problem("", "origins", f"{origin!r} is not within the RP id {rp_id!r}"))
    return problems
