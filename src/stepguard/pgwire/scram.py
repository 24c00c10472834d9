"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it: the server side for clients
signing in with a database token, the client side for the upstream role.

A verifier (salt, iterations, StoredKey, ServerKey) is what is kept at rest; the token itself is
never stored. Proofs are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

ITERATIONS = 4096
MECHANISM = "SCRAM-SHA-256"


class ScramError(ValueError):
    """A malformed or failed SCRAM exchange."""


@dataclass(frozen=True, slots=True)
class Verifier:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        """PostgreSQL's rolpassword format: SCRAM-SHA-256$iter:salt$StoredKey:ServerKey."""
        b = base64.b64encode
        return (f"{MECHANISM}${self.iterations}:{b(self.salt).decode()}$"
                f"{b(self.stored_key).decode()}:{b(self.server_key).decode()}")

    @classmethod
    def decode(cls, text: str) -> Verifier:
        try:
            mechanism, counts, keys = text.split("$")
            iterations, salt = counts.split(":")
            stored, server = keys.split(":")
            if mechanism != MECHANISM:
                raise ValueError(mechanism)
            d = base64.b64decode
            return cls(d(salt), int(iterations), d(stored), d(server))
        except ValueError as exc:
            raise ScramError("not a SCRAM-SHA-256 verifier") from exc


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def salted(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def make_verifier(password: str, *, salt: bytes | None = None,
                  iterations: int = ITERATIONS) -> Verifier:
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = salted(password, salt, iterations)
    client_key = _hmac(key, b"Client Key")
    return Verifier(salt, iterations, hashlib.sha256(client_key).digest(),
                    _hmac(key, b"Server Key"))


def _attributes(message: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for part in message.split(","):
        name, sep, value = part.partition("=")
        if not sep or len(name) != 1:
            raise ScramError("malformed SCRAM message")
        values.setdefault(name, value)
    return values


class ServerExchange:
    """One server-side exchange: `first(client_first)` → server-first; `final(client_final)` →
    server-final (raises ScramError when the proof is wrong)."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2 = ""

    def first(self, client_first: str) -> str:
        if not client_first.startswith(("n,", "y,")):
            raise ScramError("channel binding is not offered; use SCRAM-SHA-256")
        gs2_end = client_first.find(",", 2)
        if gs2_end < 0:
            raise ScramError("malformed SCRAM message")
        self._gs2 = client_first[:gs2_end + 1]
        self._client_first_bare = client_first[gs2_end + 1:]
        nonce = _attributes(self._client_first_bare).get("r", "")
        if not nonce or len(nonce) > 256:
            raise ScramError("malformed SCRAM nonce")
        combined = nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self.verifier.salt).decode()
        self._server_first = f"r={combined},s={salt},i={self.verifier.iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        without_proof, sep, proof_text = client_final.rpartition(",p=")
        if not sep or not self._server_first:
            raise ScramError("malformed SCRAM message")
        values = _attributes(without_proof)
        expected_nonce = _attributes(self._server_first)["r"]
        channel = base64.b64encode(self._gs2.encode()).decode()
        nonce_ok = hmac.compare_digest(values.get("r", "").encode(), expected_nonce.encode())
        channel_ok = values.get("c") == channel
        try:
            proof = base64.b64decode(proof_text, validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM proof") from None
        auth = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.verifier.stored_key, auth)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        proof_ok = len(proof) == len(signature) and hmac.compare_digest(
            hashlib.sha256(client_key).digest(), self.verifier.stored_key)
        if not (nonce_ok and channel_ok and proof_ok):
            raise ScramError("password authentication failed")
        return "v=" + base64.b64encode(_hmac(self.verifier.server_key, auth)).decode()


class ClientExchange:
    """The client side, for Stepguard signing in to the upstream PostgreSQL."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self.nonce}"
        self._server_signature = b""

    def first(self) -> str:
        return "n,," + self._first_bare

    def final(self, server_first: str) -> str:
        values = _attributes(server_first)
        nonce, salt, iterations = values.get("r", ""), values.get("s", ""), values.get("i", "")
        if not nonce.startswith(self.nonce) or not iterations.isdigit():
            raise ScramError("the upstream server sent a malformed SCRAM message")
        key = salted(self.password, base64.b64decode(salt), int(iterations))
        client_key = _hmac(key, b"Client Key")
        without_proof = f"c=biws,r={nonce}"
        auth = f"{self._first_bare},{server_first},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(key, b"Server Key"), auth)
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def check(self, server_final: str) -> None:
        value = _attributes(server_final).get("v", "")
        if not hmac.compare_digest(base64.b64decode(value), self._server_signature):
            raise ScramError("the upstream server's SCRAM signature is wrong")
