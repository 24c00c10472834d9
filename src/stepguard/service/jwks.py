"""The token issuer's signing keys: OpenID discovery → JWKS, cached, refetched on key rotation.

`JwksCache.key_for(kid, alg=...)` answers from a cache that lives `ttl` seconds. A `kid` the
cache does not know triggers one refetch (the issuer may have rotated its keys), but at most one
per `refetch_interval`, shared by all threads, so a flood of tokens with made-up `kid`s cannot
turn into a flood of requests to the issuer. Failures fail closed: when the key set cannot be
fetched (and the cached one has expired) `IssuerUnavailable` is raised — never a guess.

Only public, asymmetric signature keys are kept: `oct` (shared-secret) keys, keys with private
parts and keys marked for encryption are dropped, so an HMAC algorithm can never be matched.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from stepguard.core.errors import InvalidToken, IssuerUnavailable

DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_DOCUMENT_BYTES = 512 * 1024
_PRIVATE_PARTS = ("d", "p", "q", "dp", "dq", "qi", "k")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One public signature key of the issuer."""

    kid: str | None
    kty: str  # RSA, EC, OKP
    crv: str  # EC / OKP curve, "" for RSA
    alg: str  # the JWK's own `alg`, "" when the issuer did not pin one
    key: Any  # a `cryptography` public key object


@dataclass(frozen=True, slots=True)
class _KeySet:
    keys: tuple[SigningKey, ...]
    fetched_at: float


class JwksCache:
    """Fetches and caches one issuer's key set; thread-safe; every wait is bounded by `timeout`."""

    def __init__(self, *, issuer: str, clock: Callable[[], float], jwks_uri: str | None = None,
                 ttl: float = 300.0, refetch_interval: float = 30.0, timeout: float = 2.0,
                 client: httpx.Client | None = None) -> None:
        self.issuer = issuer
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self._clock = clock
        self._configured_uri = jwks_uri
        self._jwks_uri = jwks_uri
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout),
                                              follow_redirects=False)
        self._lock = threading.Lock()
        self._set: _KeySet | None = None
        self._last_attempt = float("-inf")
        self._last_failure = float("-inf")
        self.fetches = 0  # completed fetch attempts of the key set (for tests and metrics)

    def key_for(self, kid: str | None, *, alg: str) -> SigningKey:
        """The key that signed a token with this `kid` header; raises InvalidToken if unknown."""
        keys = self._fresh_keys()
        found = _select(keys.keys, kid, alg)
        if found is None and kid is not None:
            refreshed = self._refetch_for_unknown(keys)
            found = _select(refreshed.keys, kid, alg) if refreshed is not keys else None
        if found is None:
            raise InvalidToken("the token was signed with a key the issuer does not publish")
        return found

    def close(self) -> None:
        self._client.close()

    # --- cache ------------------------------------------------------------------------------

    def _fresh_keys(self) -> _KeySet:
        current = self._set
        if current is not None and self._clock() - current.fetched_at < self.ttl:
            return current
        with self._lock:
            current = self._set
            if current is not None and self._clock() - current.fetched_at < self.ttl:
                return current
            if self._clock() - self._last_failure < self.refetch_interval:
                raise IssuerUnavailable("the issuer's keys could not be fetched recently; "
                                        "retrying later")
            return self._refresh()

    def _refetch_for_unknown(self, seen: _KeySet) -> _KeySet:
        with self._lock:
            if self._set is not seen and self._set is not None:
                return self._set  # another thread refetched meanwhile
            if self._clock() - self._last_attempt < self.refetch_interval:
                return seen
            try:
                return self._refresh()
            except IssuerUnavailable:
                return seen  # the cached set is still within its ttl

    def _refresh(self) -> _KeySet:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            keys = self._fetch_keys()
        except IssuerUnavailable:
            self._last_failure = self._last_attempt
            self._jwks_uri = self._configured_uri  # rediscover next time
            raise
        self._set = _KeySet(keys, self._clock())
        return self._set

    # --- network ----------------------------------------------------------------------------

    def _fetch_keys(self) -> tuple[SigningKey, ...]:
        uri = self._jwks_uri or self._discover()
        self._jwks_uri = uri
        document = self._get_json(uri, what="key set")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise IssuerUnavailable("the issuer's key set has no `keys` list")
        return tuple(k for k in (_parse_key(entry) for entry in entries) if k is not None)

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        document = self._get_json(url, what="discovery document")
        if document.get("issuer") != self.issuer:
            raise IssuerUnavailable("the discovery document names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise IssuerUnavailable("the discovery document has no usable `jwks_uri`")
        return uri

    def _get_json(self, url: str, *, what: str) -> Mapping[str, Any]:
        return get_json(self._client, url, what=what)


def get_json(client: httpx.Client, url: str, *, what: str) -> Mapping[str, Any]:
    """One JSON object from the issuer (bounded size); `IssuerUnavailable` says what failed."""
    try:
        response = client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise IssuerUnavailable(f"the issuer's {what} could not be fetched "
                                f"({type(exc).__name__}: {exc})") from None
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
        raise IssuerUnavailable(f"the issuer's {what} answered {response.status_code}")
    try:
        document = json.loads(response.content)
    except ValueError:
        raise IssuerUnavailable(f"the issuer's {what} is not JSON") from None
    if not isinstance(document, dict):
        raise IssuerUnavailable(f"the issuer's {what} is not a JSON object")
    return document


def _parse_key(entry: object) -> SigningKey | None:
    """A public asymmetric signature key, or None for anything else (skipped, never trusted)."""
    if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
        return None
    if entry.get("use", "sig") != "sig" or any(part in entry for part in _PRIVATE_PARTS):
        return None
    ops = entry.get("key_ops")
    if ops is not None and "verify" not in ops:
        return None
    try:
        parsed = jwt.PyJWK(entry)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    kid = entry.get("kid")
    return SigningKey(kid=kid if isinstance(kid, str) else None, kty=entry["kty"],
                      crv=str(entry.get("crv", "")), alg=str(entry.get("alg", "")),
                      key=parsed.key)


# Which key type (and curve) each algorithm needs: a token cannot pick an algorithm its key
# was not made for (algorithm confusion).
ALGORITHM_KEYS: dict[str, tuple[str, str]] = {
    "RS256": ("RSA", ""), "RS384": ("RSA", ""), "RS512": ("RSA", ""),
    "PS256": ("RSA", ""), "PS384": ("RSA", ""), "PS512": ("RSA", ""),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}


def fits(key: SigningKey, alg: str) -> bool:
    """Whether `key` may verify a signature made with `alg`."""
    wanted = ALGORITHM_KEYS.get(alg)
    if wanted is None or key.kty != wanted[0] or (wanted[1] and key.crv != wanted[1]):
        return False
    return not key.alg or key.alg == alg


def _select(keys: tuple[SigningKey, ...], kid: str | None, alg: str) -> SigningKey | None:
    if kid is not None:
        return next((k for k in keys if k.kid == kid and fits(k, alg)), None)
    usable = [k for k in keys if fits(k, alg)]
    return usable[0] if len(usable) == 1 else None  # no kid: only an unambiguous key will do
