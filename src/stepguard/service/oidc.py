"""OpenID Connect relying party: discovery, the authorization request, the code exchange, and
the validation of id_tokens and back-channel logout tokens — for one configured provider.

The protocol work is done by maintained libraries: authlib builds the authorization request
(PKCE S256), exchanges the code (its httpx client, with the configured client authentication)
and checks the OpenID claims (`CodeIDToken`: iss, aud, exp, iat, nonce, azp, at_hash,
auth_time with max_age); joserfc (authlib's JOSE layer) verifies the signature. The key comes
from `JwksCache` (rotation, a bounded refetch on an unknown `kid`, asymmetric public keys
only, each algorithm only with its own key type). On top, what a demanding relying party adds:
the algorithm allow-list before any key is looked up, `aud` naming this client and no one else,
`iat` neither in the future nor older than `max_token_age`, `auth_time` not in the future, and
a logout token is never accepted as an id_token (nor the reverse).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeGuard
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.claims import JWTClaims
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from stepguard.config.schema import OidcProvider
from stepguard.core.errors import InvalidToken, IssuerUnavailable, StepguardError
from stepguard.service.jwks import DISCOVERY_PATH, MAX_DOCUMENT_BYTES, JwksCache, get_json

# authlib's httpx client runs on `httpx2` where that is installed, else on `httpx`: a
# connection failure is either one's error.
try:
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover - depends on what else is installed
    _TRANSPORT_ERRORS = (httpx.HTTPError,)
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Claims the UserInfo endpoint may never add: they identify the user or prove the sign-in.
_PROTECTED = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "nonce", "acr", "amr",
                        "auth_time", "azp", "sid", "at_hash", "c_hash", "jti", "events",
                        "acrs"})
LOGOUT_TOKEN_WINDOW = 120.0  # seconds: a logout token must have been issued this recently


class OidcRefused(StepguardError):
    """The provider's answer does not prove what it must; `reason` is safe to show and log."""

    def __init__(self, reason: str, *, code: str = "refused") -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


class ProviderUnreachable(StepguardError):
    """Discovery failed; the message says what was tried and what happened."""


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The parts of the discovery document Stepguard uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str = ""
    userinfo_endpoint: str = ""
    claims_parameter: bool = False
    iss_parameter: bool = False  # RFC 9207: the authorization response names its issuer


@dataclass(frozen=True, slots=True)
class IdToken:
    """A validated id_token: who, how and when the provider authenticated them."""

    issuer: str
    subject: str
    claims: Mapping[str, Any]
    acr: str
    amr: tuple[str, ...]
    auth_time: float | None
    sid: str
    raw: str
    acrs: tuple[str, ...] = ()  # Entra ID: the authentication contexts the sign-in satisfied


@dataclass(frozen=True, slots=True)
class LogoutToken:
    """A validated back-channel logout token: end the sessions of `sid`, or of `subject`."""

    issuer: str
    subject: str
    sid: str
    jti: str
    iat: float


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """What one authorization request asks for, besides the secrets made for it."""

    state: str
    nonce: str
    code_verifier: str
    max_age: float | None = None
    prompt: str = ""
    acr_values: str = ""
    essential_acr: bool = False
    auth_context: str = ""  # Entra ID: ask for this context as an essential `acrs` claim


class OidcClient:
    """One provider, as a relying party. Thread-safe; every network wait bounded."""

    def __init__(self, settings: OidcProvider, metadata: ProviderMetadata, *, redirect_uri: str,
                 clock: Callable[[], float], http: httpx.Client) -> None:
        self.settings, self.metadata, self.redirect_uri = settings, metadata, redirect_uri
        self._clock, self._http = clock, http
        self.keys = JwksCache(issuer=metadata.issuer, jwks_uri=metadata.jwks_uri, clock=clock,
                              refetch_interval=settings.jwks_refetch_interval,
                              timeout=settings.http_timeout, client=http)

    @classmethod
    def discover(cls, settings: OidcProvider, *, redirect_uri: str, clock: Callable[[], float],
                 http: httpx.Client | None = None) -> OidcClient:
        """Read the provider's discovery document; `ProviderUnreachable` names what was tried."""
        client = http or httpx.Client(timeout=httpx.Timeout(settings.http_timeout),
                                      follow_redirects=False)
        url = settings.issuer.rstrip("/") + DISCOVERY_PATH
        return cls(settings, _metadata(settings, url, client), redirect_uri=redirect_uri,
                   clock=clock, http=client)

    @property
    def name(self) -> str:
        return self.settings.name

    def close(self) -> None:
        self._http.close()

    # --- the authorization request -------------------------------------------------------------

    def authorization_url(self, request: AuthorizationRequest) -> str:
        scopes = dict.fromkeys(["openid", *self.settings.scopes])
        extra: dict[str, str] = {}
        if request.max_age is not None:
            extra["max_age"] = str(int(request.max_age))
        if request.prompt:
            extra["prompt"] = request.prompt
        if request.acr_values:
            extra["acr_values"] = request.acr_values
        claims = self._claims_request(request)
        if claims:
            extra["claims"] = json.dumps(claims, separators=(",", ":"))
        return str(prepare_grant_uri(
            self.metadata.authorization_endpoint, self.settings.client_id, "code",
            redirect_uri=self.redirect_uri, scope=" ".join(scopes), state=request.state,
            nonce=request.nonce, code_challenge=create_s256_code_challenge(request.code_verifier),
            code_challenge_method="S256", **extra))

    def _claims_request(self, request: AuthorizationRequest) -> dict[str, Any]:
        """The `claims` parameter. An auth context is asked for even when discovery does not
        announce the parameter (Entra ID honours it without saying so): the answer is checked."""
        wanted: dict[str, Any] = {}
        if request.auth_context:
            wanted["acrs"] = {"essential": True, "value": request.auth_context}
        if not self.metadata.claims_parameter:
            return {"id_token": wanted} if wanted else {}
        if self.settings.request_auth_time:
            wanted["auth_time"] = {"essential": True}
        if request.essential_acr and request.acr_values:
            wanted["acr"] = {"essential": True, "values": request.acr_values.split()}
        return {"id_token": wanted} if wanted else {}

    # --- the answer ----------------------------------------------------------------------------

    def check_response_issuer(self, iss: str | None) -> None:
        """RFC 9207 mix-up defence: an `iss` in the response must be this provider's, and a
        provider that promises to send it must send it."""
        if iss is None:
            if self.metadata.iss_parameter:
                raise OidcRefused("The sign-in answer does not name its provider.", code="mix_up")
            return
        if not hmac.compare_digest(iss.encode(), self.metadata.issuer.encode()):
            raise OidcRefused("The sign-in answer came from another provider.", code="mix_up")

    def exchange(self, code: str, *, code_verifier: str) -> Mapping[str, Any]:
        """The token response for an authorization code (authlib, with PKCE)."""
        s = self.settings
        client = OAuth2Client(client_id=s.client_id, client_secret=s.client_secret or None,
                              token_endpoint_auth_method=s.token_auth,
                              timeout=s.http_timeout, follow_redirects=False, trust_env=False)
        try:
            with client:
                token = client.fetch_token(self.metadata.token_endpoint, code=code,
                                           grant_type="authorization_code",
                                           redirect_uri=self.redirect_uri,
                                           code_verifier=code_verifier)
        except _TRANSPORT_ERRORS as exc:
            raise IssuerUnavailable(f"the provider's token endpoint could not be reached "
                                    f"({type(exc).__name__})") from None
        except (AuthlibBaseError, ValueError) as exc:
            error = getattr(exc, "error", "") or "invalid response"
            raise OidcRefused(f"The provider refused the sign-in ({error}).",
                              code="token_error") from None
        if not isinstance(token.get("id_token"), str):
            raise OidcRefused("The provider sent no id_token.", code="no_id_token")
        return dict(token)

    def id_token(self, raw: str, *, nonce: str, max_age: float | None = None,
                 access_token: str | None = None) -> IdToken:
        """Validate an id_token from this provider's token endpoint."""
        header, claims = self._verified(raw)
        if str(header.get("typ", "")).lower() == "logout+jwt" or "events" in claims:
            raise OidcRefused("A logout token is not an id_token.", code="token_type")
        params = {"nonce": nonce, "client_id": self.settings.client_id, "max_age": max_age,
                  "access_token": access_token}
        self._validate(CodeIDToken(claims, header, self._options(), params))
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(
                claims["nonce"].encode(), nonce.encode()):
            raise OidcRefused("The id_token was not made for this sign-in (nonce).", code="nonce")
        auth_time = claims.get("auth_time")
        if auth_time is not None and (not _number(auth_time)
                                      or auth_time > self._clock() + self.settings.leeway):
            raise OidcRefused("The id_token's auth_time is not usable.", code="auth_time")
        amr, acrs = claims.get("amr", []), claims.get("acrs", [])
        return IdToken(
            issuer=claims["iss"], subject=claims["sub"], claims=claims,
            acr=claims["acr"] if isinstance(claims.get("acr"), str) else "",
            amr=tuple(str(v)[:32] for v in amr[:16]) if isinstance(amr, list) else (),
            auth_time=float(auth_time) if auth_time is not None else None,
            sid=claims["sid"] if isinstance(claims.get("sid"), str) else "", raw=raw,
            acrs=tuple(v for v in acrs[:16] if isinstance(v, str) and len(v) <= 32)
            if isinstance(acrs, list) else ())

    def logout_token(self, raw: str) -> LogoutToken:
        """Validate a back-channel logout token (OpenID Connect Back-Channel Logout 1.0, 2.6)."""
        header, claims = self._verified(raw)
        typ = str(header.get("typ", "logout+jwt")).lower()
        if typ not in ("logout+jwt", "application/logout+jwt", "jwt"):
            raise OidcRefused("Not a logout token (typ).", code="token_type")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise OidcRefused("Not a logout token (events).", code="token_type")
        if "nonce" in claims:
            raise OidcRefused("A logout token carries no nonce.", code="token_type")
        options = {**self._options(), "jti": {"essential": True}, "iat": {"essential": True},
                   "exp": {"essential": True}}
        self._validate(JWTClaims(claims, header, options))
        sub, sid = claims.get("sub", ""), claims.get("sid", "")
        if not (isinstance(sub, str) and isinstance(sid, str) and (sub or sid)):
            raise OidcRefused("A logout token names a sub or a sid.", code="no_subject")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise OidcRefused("A logout token carries a jti.", code="no_jti")
        if claims["iat"] < self._clock() - LOGOUT_TOKEN_WINDOW - self.settings.leeway:
            raise OidcRefused("The logout token is too old.", code="stale")
        return LogoutToken(issuer=claims["iss"], subject=sub, sid=sid, jti=claims["jti"],
                           iat=float(claims["iat"]))

    def with_userinfo(self, token: IdToken, access_token: object) -> IdToken:
        """The id_token's claims completed from the UserInfo endpoint (providers such as
        oidc-provider put profile, email and groups only there). UserInfo only adds claims the
        id_token lacks, never the ones that identify or prove (`sub`, `iss`, `acr`, ...), and
        only when its `sub` is the id_token's (OpenID Connect Core 5.3.2)."""
        if not self.metadata.userinfo_endpoint or not isinstance(access_token, str):
            return token
        try:
            response = self._http.get(self.metadata.userinfo_endpoint, headers={
                "Authorization": f"Bearer {access_token}", "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(f"the provider's userinfo endpoint could not be reached "
                                    f"({type(exc).__name__})") from None
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise OidcRefused("The provider's userinfo answer was refused.", code="userinfo")
        try:
            info = json.loads(response.content)
        except ValueError:
            raise OidcRefused("The provider's userinfo answer is not JSON.",
                              code="userinfo") from None
        if not isinstance(info, dict) or not isinstance(info.get("sub"), str) or \
                not hmac.compare_digest(info["sub"].encode(), token.subject.encode()):
            raise OidcRefused("The provider's userinfo names another user.", code="userinfo")
        extra = {k: v for k, v in info.items() if k not in token.claims and k not in _PROTECTED}
        return replace(token, claims={**token.claims, **extra})

    def end_session_url(self, *, id_token_hint: str, post_logout_redirect_uri: str,
                        state: str) -> str:
        """RP-initiated logout at the provider ("" when it offers none)."""
        if not self.metadata.end_session_endpoint:
            return ""
        query = {"client_id": self.settings.client_id,
                 "post_logout_redirect_uri": post_logout_redirect_uri, "state": state}
        if id_token_hint:
            query["id_token_hint"] = id_token_hint
        separator = "&" if "?" in self.metadata.end_session_endpoint else "?"
        return self.metadata.end_session_endpoint + separator + urlencode(query)

    # --- shared --------------------------------------------------------------------------------

    def _verified(self, raw: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Signature checked with the provider's published key for the token's allowed `alg`."""
        if not isinstance(raw, str) or len(raw) > 16_384 or raw.count(".") != 2:
            raise OidcRefused("The token is not a signed JWT.", code="malformed")
        try:
            header = dict(jws.extract_compact(raw.encode()).headers())
        except (JoseError, ValueError, TypeError):
            raise OidcRefused("The token is not a signed JWT.", code="malformed") from None
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise OidcRefused(f"The token's algorithm is not allowed ({str(alg)[:16]}).",
                              code="algorithm")
        if "crit" in header or "jku" in header or "x5u" in header or "jwk" in header:
            raise OidcRefused("The token names its own key or critical extensions.",
                              code="header")
        kid = header.get("kid")
        try:
            key = self.keys.key_for(kid if isinstance(kid, str) else None, alg=alg)
            token = jwt.decode(raw, _jose_key(key.kty, key.key), algorithms=[alg])
        except InvalidToken as exc:
            raise OidcRefused(exc.reason, code="unknown_key") from None
        except (JoseError, ValueError, TypeError):
            raise OidcRefused("The token's signature is not valid.", code="signature") from None
        return header, dict(token.claims)

    def _options(self) -> dict[str, Any]:
        return {"iss": {"essential": True, "value": self.metadata.issuer},
                "aud": {"essential": True, "value": self.settings.client_id},
                "sub": {"essential": False}}

    def _validate(self, claims: JWTClaims) -> None:
        now = self._clock()
        try:
            claims.validate(now=int(now), leeway=int(self.settings.leeway))
        except JoseError as exc:
            raise OidcRefused(f"The token is not valid here ({_claim_error(exc)}).",
                              code="claims") from None
        self._check_audience(claims)
        iat = claims.get("iat")
        if not _number(iat) or iat > now + self.settings.leeway:
            raise OidcRefused("The token's iat is in the future.", code="iat")
        if iat < now - self.settings.max_token_age - self.settings.leeway:
            raise OidcRefused("The token was issued too long ago.", code="iat")
        sub = claims.get("sub")
        if sub is not None and (not isinstance(sub, str) or not 0 < len(sub) <= 255):
            raise OidcRefused("The token's sub is not usable.", code="sub")

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        """`aud` is this client alone (an extra audience is not trusted) and `azp`, if sent,
        is this client too."""
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if audiences != [self.settings.client_id]:
            raise OidcRefused("The token was made for another client (aud).", code="aud")
        azp = claims.get("azp")
        if azp is not None and azp != self.settings.client_id:
            raise OidcRefused("The token was made for another client (azp).", code="azp")


def _metadata(settings: OidcProvider, url: str, client: httpx.Client) -> ProviderMetadata:
    try:
        doc = get_json(client, url, what="discovery document")
    except IssuerUnavailable as exc:
        raise ProviderUnreachable(f"GET {url} failed: {exc}") from None
    if doc.get("issuer") != settings.issuer:
        raise ProviderUnreachable(f"GET {url}: the document names the issuer "
                                  f"{str(doc.get('issuer'))[:200]!r}, not {settings.issuer!r}")
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")
               if not _endpoint(doc.get(k), settings.issuer)]
    if missing:
        raise ProviderUnreachable(f"GET {url}: no usable {', '.join(missing)}")
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise ProviderUnreachable(f"GET {url}: the provider does not support PKCE S256")
    end, userinfo = doc.get("end_session_endpoint"), doc.get("userinfo_endpoint")
    end = end if _endpoint(end, settings.issuer) else ""
    userinfo = userinfo if _endpoint(userinfo, settings.issuer) else ""
    return ProviderMetadata(
        issuer=doc["issuer"], authorization_endpoint=doc["authorization_endpoint"],
        token_endpoint=doc["token_endpoint"], jwks_uri=doc["jwks_uri"],
        end_session_endpoint=end, userinfo_endpoint=userinfo,
        claims_parameter=doc.get("claims_parameter_supported") is True,
        iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True)


def _jose_key(kty: str, key: Any) -> RSAKey | ECKey | OKPKey:
    """A `cryptography` public key from `JwksCache` (RSA, EC or OKP only) as a joserfc key."""
    if kty == "RSA":
        return RSAKey.import_key(key)
    if kty == "EC":
        return ECKey.import_key(key)
    return OKPKey.import_key(key)


def _endpoint(value: object, issuer: str) -> TypeGuard[str]:
    """An https URL (http only where the issuer itself is loopback http)."""
    if not isinstance(value, str):
        return False
    scheme = urlsplit(value).scheme
    return scheme == "https" or (scheme == "http" and issuer.startswith("http://"))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _claim_error(exc: JoseError) -> str:
    return str(getattr(exc, "description", "") or getattr(exc, "error", "") or "claims")[:120]


def state_hash(state: str) -> str:
    """Flows are stored under the SHA-256 of their `state`: the store never holds it."""
    return hashlib.sha256(state.encode()).hexdigest()
