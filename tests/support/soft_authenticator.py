"""A software WebAuthn authenticator (EC P-256 / ES256, attestation "none") for tests.

It answers real `navigator.credentials.create()` / `.get()` options JSON with the same JSON a
browser sends back (clientDataJSON, attestationObject or authenticatorData + signature), built
with `cryptography` and `cbor2`. Keyword knobs forge each attack a relying party must refuse:
another origin, another RP id, another clientData type or credential type, UV or UP off, a
chosen sign counter, another challenge, another user handle, a signature by another key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_BE = 0x08  # backup eligible: a syncable (multi-device) passkey
FLAG_BS = 0x10  # backed up
FLAG_AT = 0x40
DEFAULT_AAGUID = bytes.fromhex("adce000235bcc60a648b0b25f1f05503")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftCredential:
    """One key pair the authenticator holds, scoped to an RP id and a user handle."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )


@dataclass
class SoftAuthenticator:
    """A platform authenticator in software. `counter_step=0` mimics passkeys that report 0;
    `synced=True` mimics a passkey provider that syncs its keys (BE and BS flags set)."""

    origin: str
    counter_step: int = 1
    synced: bool = False
    aaguid: bytes = DEFAULT_AAGUID
    credentials: dict[bytes, SoftCredential] = field(default_factory=dict)

    def create(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        client_type: str = "webauthn.create",
        credential_type: str = "public-key",
        uv: bool = True,
        up: bool = True,
        challenge: bytes | None = None,
        sign_count: int = 0,
    ) -> str:
        """Make a new credential; return the registration response JSON."""
        options = json.loads(options_json)
        rp = rp_id or options["rp"]["id"]
        credential = SoftCredential(
            credential_id=secrets.token_bytes(32),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=options["rp"]["id"],
            user_handle=b64url_decode(options["user"]["id"]),
        )
        self.credentials[credential.credential_id] = credential
        attested = (
            self.aaguid
            + struct.pack(">H", len(credential.credential_id))
            + credential.credential_id
            + credential.cose_public_key()
        )
        auth_data = _auth_data(rp, self._flags(up=up, uv=uv) | FLAG_AT, sign_count) + attested
        client_data = self._client_data(client_type, options, challenge, origin)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        response = {
            "clientDataJSON": b64url(client_data),
            "attestationObject": b64url(attestation),
            "transports": ["internal", "hybrid"],
        }
        return _credential_json(credential.credential_id, credential_type, response)

    def get(
        self,
        options_json: str,
        *,
        credential_id: bytes | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        client_type: str = "webauthn.get",
        credential_type: str = "public-key",
        uv: bool = True,
        up: bool = True,
        challenge: bytes | None = None,
        sign_count: int | None = None,
        user_handle: bytes | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        """Sign an assertion; return the authentication response JSON."""
        options = json.loads(options_json)
        credential = self._pick(options, credential_id)
        if sign_count is None:
            credential.sign_count += self.counter_step
            sign_count = credential.sign_count
        auth_data = _auth_data(rp_id or options["rpId"], self._flags(up=up, uv=uv), sign_count)
        client_data = self._client_data(client_type, options, challenge, origin)
        signed = auth_data + hashlib.sha256(client_data).digest()
        key = signing_key or credential.private_key
        signature = key.sign(signed, ec.ECDSA(hashes.SHA256()))
        response = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(signature),
            "userHandle": b64url(user_handle or credential.user_handle),
        }
        return _credential_json(credential.credential_id, credential_type, response)

    def _flags(self, *, up: bool, uv: bool) -> int:
        synced = FLAG_BE | FLAG_BS if self.synced else 0
        return (FLAG_UP if up else 0) | (FLAG_UV if uv else 0) | synced

    def _pick(self, options: dict[str, Any], credential_id: bytes | None) -> SoftCredential:
        if credential_id is not None:
            return self.credentials[credential_id]
        allowed = [b64url_decode(c["id"]) for c in options.get("allowCredentials", [])]
        usable = [c for c in self.credentials.values() if not allowed or c.credential_id in allowed]
        if not usable:
            raise LookupError("no credential for these options")
        return usable[0]

    def _client_data(
        self, client_type: str, options: dict[str, Any], challenge: bytes | None, origin: str | None
    ) -> bytes:
        data = {
            "type": client_type,
            "challenge": b64url(challenge) if challenge is not None else options["challenge"],
            "origin": origin or self.origin,
            "crossOrigin": False,
        }
        return json.dumps(data, separators=(",", ":")).encode("utf-8")




def _auth_data(rp_id: str, flags: int, sign_count: int) -> bytes:
    rp_id_hash = hashlib.sha256(rp_id.encode("utf-8")).digest()
    return rp_id_hash + bytes([flags]) + struct.pack(">I", sign_count)


def _credential_json(credential_id: bytes, credential_type: str, response: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": credential_type,
            "response": response,
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }
    )
