"""Encryption at rest for factor secrets (TOTP seeds): AES-256-GCM with key rotation.

A sealed token reads `v1.<key id>.<b64url nonce>.<b64url ciphertext+tag>`. The additional
authenticated data binds the ciphertext to its owner (`seed_aad(user_id=…, factor_id=…)`), to the
format version and to the key id, so a seed copied to another user's row, or relabelled with
another key id, does not open. Rotate by adding a new key, making it current, and calling
`reseal` on every token for which `needs_reseal` is true; drop the old key afterwards.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stepguard.core.errors import ConfigError, Problem, SecretBoxError

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Keyring:
    """Named 256-bit keys; `current` seals, every key opens."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        problems = [*_key_problems(self.keys), *_current_problems(self.current, self.keys)]
        if problems:
            raise ConfigError(problems)
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @classmethod
    def from_config(cls, keys: Mapping[str, str], current: str) -> Keyring:
        """Build from `{key id: base64 key}` (standard or URL-safe alphabet) and the current id."""
        decoded: dict[str, bytes] = {}
        problems: list[Problem] = []
        for key_id, text in keys.items():
            try:
                decoded[key_id] = _b64decode(text)
            except ValueError:
                problems.append(Problem("", f"keys.{key_id}", "is not valid base64"))
        if problems:
            raise ConfigError(problems)
        return cls(current=current, keys=decoded)

    def key(self, key_id: str) -> bytes:
        """The key named `key_id`; `SecretBoxError` when the keyring does not hold it."""
        try:
            return self.keys[key_id]
        except KeyError:
            reason = "sealed with a key this keyring does not hold"
            raise SecretBoxError(reason, code="unknown_key") from None


def new_key() -> str:
    """A fresh random 256-bit key, base64-encoded, for configuration files."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def seed_aad(*, user_id: str, factor_id: str) -> bytes:
    """Additional data that binds a sealed secret to one user's one factor (length-prefixed)."""
    parts = [b"stepguard-factor-secret", user_id.encode("utf-8"), factor_id.encode("utf-8")]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def seal(*, keyring: Keyring, plaintext: bytes, aad: bytes) -> str:
    """Encrypt `plaintext` under the current key; a fresh random nonce every time."""
    key_id = keyring.current
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(keyring.key(key_id)).encrypt(nonce, plaintext, _full_aad(key_id, aad))
    return ".".join((VERSION, key_id, _b64url(nonce), _b64url(sealed)))


def open_sealed(*, keyring: Keyring, token: str, aad: bytes) -> bytes:
    """Decrypt a sealed token; `SecretBoxError` if malformed, tampered, moved or key unknown."""
    key_id, nonce, sealed = _parse(token)
    try:
        return AESGCM(keyring.key(key_id)).decrypt(nonce, sealed, _full_aad(key_id, aad))
    except InvalidTag:
        raise SecretBoxError(
            "the sealed secret was altered or belongs elsewhere", code="tampered"
        ) from None


def needs_reseal(token: str, keyring: Keyring) -> bool:
    """True when `token` was sealed with a key other than the current one."""
    key_id, _, _ = _parse(token)
    return not hmac.compare_digest(key_id.encode(), keyring.current.encode())


def reseal(*, keyring: Keyring, token: str, aad: bytes) -> str:
    """Open with whichever key sealed it, seal again under the current key (key rotation)."""
    return seal(
        keyring=keyring, plaintext=open_sealed(keyring=keyring, token=token, aad=aad), aad=aad
    )


def _parse(token: str) -> tuple[str, bytes, bytes]:
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not _KEY_ID.fullmatch(parts[1]):
        raise SecretBoxError("the sealed secret is malformed", code="malformed")
    try:
        nonce, sealed = _b64url_decode(parts[2]), _b64url_decode(parts[3])
    except ValueError:
        raise SecretBoxError("the sealed secret is malformed", code="malformed") from None
    if len(nonce) != NONCE_BYTES or len(sealed) < 16:
        raise SecretBoxError("the sealed secret is malformed", code="malformed")
    return parts[1], nonce, sealed


def _full_aad(key_id: str, aad: bytes) -> bytes:
    return b"stepguard-secretbox\0" + VERSION.encode() + b"\0" + key_id.encode() + b"\0" + aad


def _key_problems(keys: Mapping[str, bytes]) -> list[Problem]:
    problems = []
    for key_id, key in keys.items():
        if not _KEY_ID.fullmatch(key_id):
            problems.append(Problem("", f"keys.{key_id}", "key id must match [A-Za-z0-9_-]{1,64}"))
        if len(key) != KEY_BYTES:
            problems.append(Problem("", f"keys.{key_id}", f"key must be {KEY_BYTES} bytes"))
    return problems


def _current_problems(current: str, keys: Mapping[str, bytes]) -> list[Problem]:
    if current in keys:
        return []
    return [Problem("", "current", "the current key id is not in the keyring")]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if "+" in text or "/" in text or "=" in text:
        raise ValueError("not base64url")
    return _b64decode(text)


def _b64decode(text: str) -> bytes:
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
