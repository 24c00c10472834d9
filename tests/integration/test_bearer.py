"""Bearer tokens: validation, the JWKS cache and RFC 9470 answers, with real keys and a real store.

The issuer is simulated by an `httpx.MockTransport` serving a discovery document and a JWKS built
from keys generated here (EC P-256, RSA 2048, Ed25519); tokens are signed with those keys by
PyJWT, and attack tokens (`alg: none`, HS256 keyed with the public key) are forged by hand.
A real Runtime (SQLite store, audit writer) decides with a real compiled policy. The real
OpenID provider run is tests/e2e/test_oidc_step_up.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import ValidationError

from stepguard.adapters.bearer import (
    BearerSettings,
    BearerValidator,
    bearer_challenge,
    bearer_credentials,
    bearer_response,
    decide_bearer,
    validator_for,
)
from stepguard.config.load import load_config
from stepguard.config.schema import StepguardConfig
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.core.errors import InvalidToken, IssuerUnavailable
from stepguard.core.levels import Level
from stepguard.service.guard import Guard
from stepguard.service.jwks import JwksCache
from stepguard.service.runtime import Runtime, build_runtime

ISSUER = "https://issuer.test"
AUDIENCE = "https://api.test"
T0 = 1_750_000_000.0

POLICY = """\
levels:
  aal2: {acr: "urn:stepguard:aal2", max_session: 24h, idle: 1h}
  aal3: {acr: "urn:stepguard:aal3", max_session: 12h, idle: 15m}
attributes:
  amount: number
rules:
  - name: public
    match: {paths: ["/public/**"]}
    allow: true
  - name: forbidden
    match: {paths: ["/forbidden"]}
    deny: "Nobody may do this"
  - name: payments
    match: {paths: ["/payments/**"]}
    require: {level: aal2, max_age: 5m, reason: "Sending money"}
  - name: fresh-read
    match: {paths: ["/reports/fresh"]}
    require: {level: aal1, max_age: 1h}
  - name: admin
    match: {paths: ["/admin/**"]}
    require: {level: aal2, max_age: 1h, scope: admin, methods: [webauthn, totp]}
  - name: wire
    match: {paths: ["/wire"]}
    require: {level: aal2, max_age: 0s, single_use: true, reason: "Approve a wire"}
  - name: bound
    match: {paths: ["/bound"]}
    require: {level: aal2, max_age: 0s, single_use: true, bind: [amount]}
default: {level: aal1}
"""


# --- the simulated issuer ----------------------------------------------------------------------


@dataclass
class Key:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data = json.loads(algorithm.to_jwk(public))
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def ec_key(kid: str = "ec-1") -> Key:
    return Key(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def rsa_key(kid: str = "rsa-1") -> Key:
    return Key(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ed_key(kid: str = "ed-1") -> Key:
    return Key(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


@dataclass
class Issuer:
    """Discovery + JWKS over an httpx MockTransport; `up=False` makes every request fail."""

    keys: list[Key]
    issuer: str = ISSUER
    up: bool = True
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if not self.up:
            raise httpx.ConnectError("issuer down", request=request)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": self.issuer,
                                             "jwks_uri": f"{ISSUER}/jwks"})
        if request.url.path == "/jwks":
            return httpx.Response(200, json={"keys": [*self.extra_jwks,
                                                      *(k.jwk() for k in self.keys)]})
        return httpx.Response(404)

    def jwks(self, clock: Clock, **kwargs: Any) -> JwksCache:
        client = httpx.Client(transport=httpx.MockTransport(self.handler))
        return JwksCache(issuer=ISSUER, clock=clock, client=client, **kwargs)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(T0) - 10,
            "exp": int(T0) + 300, "jti": secrets.token_hex(8), "client_id": "app",
            "acr": "urn:stepguard:aal1", "amr": ["pwd"], "auth_time": int(T0) - 10,
            "groups": ["staff", "finance"]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Key, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key.private, algorithm=key.alg,
                      headers={"kid": key.kid, "typ": "at+jwt", **(headers or {})})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], mac_key: bytes | None = None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if mac_key is None:
        return signing_input + "."
    mac = hmac.new(mac_key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


# --- fixtures -----------------------------------------------------------------------------------

_guards: dict[int, Guard] = {}  # the runtime fixture's Guard, by id of its runtime



@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    totp = base64.b64encode(secrets.token_bytes(32)).decode()
    (tmp_path / "stepguard.yaml").write_text(f"""
policy: policy.yaml
store: {{url: "sqlite:///stepguard.db"}}
secrets: {{cookie_key: "{secrets.token_urlsafe(32)}",
           totp_keys: {{k1: "{totp}"}}, totp_current: k1}}
bearer: {{issuer: "{ISSUER}", audience: "{AUDIENCE}", groups_claim: groups}}
""")
    clock = Clock()
    rt = build_runtime(load_config(tmp_path / "stepguard.yaml"), clock=clock)
    _guards[id(rt)] = Guard(rt)
    yield rt
    del _guards[id(rt)]
    rt.close()


@pytest.fixture
def clock(runtime: Runtime) -> Clock:
    assert isinstance(runtime.clock, Clock)
    return runtime.clock


@pytest.fixture
def key() -> Key:
    return ec_key()


@pytest.fixture
def issuer(key: Key) -> Issuer:
    return Issuer([key])


@pytest.fixture
def validator(runtime: Runtime, issuer: Issuer, clock: Clock) -> BearerValidator:
    settings = BearerSettings.from_config(runtime.config.bearer, runtime.policy)
    return BearerValidator(settings, issuer.jwks(clock), now=clock)


def guard_of(runtime: Runtime) -> Guard:
    """The runtime's one Guard, as a server has."""
    return _guards[id(runtime)]


def ctx(path: str = "/reports", method: str = "GET", **attributes: Any) -> RequestContext:
    return RequestContext(method=method, host="api.test", path=path, attributes=attributes)


def check(runtime: Runtime, validator: BearerValidator, token: str | None, path: str = "/reports",
          **attributes: Any):  # type: ignore[no-untyped-def]
    header = f"Bearer {token}" if token is not None else None
    return decide_bearer(guard_of(runtime), ctx(path, **attributes), header, validator=validator)


# --- validation ---------------------------------------------------------------------------------


def test_a_valid_token_becomes_a_session_state(validator: BearerValidator, key: Key) -> None:
    token = validator.validate(sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"]))
    assert token.subject.id == "alice"
    assert token.subject.groups == frozenset({"staff", "finance"})
    assert token.client_id == "app" and token.acr == "urn:stepguard:aal2"
    event = token.event
    assert (event.level, event.factor, event.amr, event.at) == (Level.AAL2, "totp",
                                                                ("pwd", "otp"), T0 - 10)
    assert token.state.id.startswith("bearer-") and len(token.state.id) <= 64


@pytest.mark.parametrize("make", [ec_key, rsa_key, ed_key])
def test_each_default_algorithm_verifies(runtime: Runtime, clock: Clock, make: Any) -> None:
    key = make()
    settings = BearerSettings.from_config(runtime.config.bearer, runtime.policy)
    validator = BearerValidator(settings, Issuer([key]).jwks(clock), now=clock)
    assert validator.validate(sign(key)).subject.id == "alice"


@pytest.mark.parametrize(("acr", "level"), [
    ("urn:stepguard:aal3", Level.AAL3), ("urn:stepguard:aal1", Level.AAL1),
    ("urn:other:gold", Level.AAL1), (None, Level.AAL1),
])
def test_acr_maps_to_a_level_and_unknown_is_aal1(validator: BearerValidator, key: Key,
                                                 acr: str | None, level: Level) -> None:
    assert validator.validate(sign(key, acr=acr)).event.level is level


def test_a_configured_acr_map_replaces_the_policy_uris(runtime: Runtime, issuer: Issuer,
                                                       clock: Clock, key: Key) -> None:
    section = runtime.config.bearer.model_copy(update={"acr_levels": {"mfa": "aal2"}})
    settings = BearerSettings.from_config(section, runtime.policy)
    validator = BearerValidator(settings, issuer.jwks(clock), now=clock)
    assert validator.validate(sign(key, acr="mfa")).event.level is Level.AAL2
    assert validator.validate(sign(key, acr="urn:stepguard:aal2")).event.level is Level.AAL1
    assert settings.acr_values(Level.AAL2) == ("mfa",)


def test_amr_gives_the_strongest_factor(validator: BearerValidator, key: Key) -> None:
    assert validator.validate(sign(key, amr=["pwd", "hwk", "user"])).event.factor == "webauthn"
    assert validator.validate(sign(key, amr=["mca"])).event.factor == "push"
    assert validator.validate(sign(key, amr=None)).event.factor == ""


def expect_invalid(validator: BearerValidator, token: str, words: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        validator.validate(token)
    assert words in caught.value.reason
    assert caught.value.code == "invalid_token"


def test_time_claims_are_checked_on_the_injected_clock_with_leeway(
        validator: BearerValidator, key: Key, clock: Clock) -> None:
    expired = sign(key, exp=int(T0) - 20)  # within the 30 s leeway
    assert validator.validate(expired).subject.id == "alice"
    clock.now = T0 + 11
    expect_invalid(validator, expired, "expired")
    clock.now = T0
    expect_invalid(validator, sign(key, nbf=int(T0) + 120), "not valid yet")
    assert validator.validate(sign(key, nbf=int(T0) + 20)).subject.id == "alice"
    expect_invalid(validator, sign(key, iat=int(T0) + 120), "issued in the future")
    expect_invalid(validator, sign(key, auth_time=int(T0) + 120), "in the future")


@pytest.mark.parametrize(("overrides", "words"), [
    ({"aud": "https://other.test"}, "another audience"),
    ({"iss": "https://evil.test"}, "another issuer"),
    ({"exp": None}, "no `exp`"),
    ({"sub": None}, "no `sub`"),
    ({"amr": "pwd otp", "acr": 3}, "`acr` claim is not a string"),
    ({"auth_time": "yesterday"}, "not a number"),
    ({"exp": True}, "not a number"),
    ({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}, "bound to a client key"),
])
def test_claims_are_refused(validator: BearerValidator, key: Key, overrides: dict[str, Any],
                            words: str) -> None:
    expect_invalid(validator, sign(key, **overrides), words)


def test_audience_may_be_one_of_a_list(validator: BearerValidator, key: Key) -> None:
    token = sign(key, aud=["https://other.test", AUDIENCE])
    assert validator.validate(token).subject.id == "alice"


def test_alg_none_is_refused(validator: BearerValidator, key: Key) -> None:
    token = forge({"alg": "none", "kid": key.kid, "typ": "at+jwt"}, claims())
    expect_invalid(validator, token, "algorithm is not allowed")


def test_hs256_keyed_with_the_public_key_is_refused(runtime: Runtime, clock: Clock) -> None:
    key = rsa_key()
    token = forge({"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}, claims(), key.public_pem())
    settings = BearerSettings.from_config(runtime.config.bearer, runtime.policy)
    validator = BearerValidator(settings, Issuer([key]).jwks(clock), now=clock)
    expect_invalid(validator, token, "algorithm is not allowed")
    # Even if a careless config allowed HS256, no symmetric key is ever taken from a JWKS.
    loose = BearerValidator(BearerSettings(**{**_fields(settings), "algorithms": frozenset(
        {"HS256", "RS256"})}), Issuer([key]).jwks(clock), now=clock)
    expect_invalid(loose, token, "does not publish")


def _fields(settings: BearerSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in BearerSettings.__slots__}


def test_an_algorithm_that_does_not_fit_the_key_is_refused(runtime: Runtime, clock: Clock) -> None:
    rsa1 = rsa_key("shared")
    ec1 = ec_key("shared")
    validator = BearerValidator(BearerSettings.from_config(runtime.config.bearer, runtime.policy),
                                Issuer([rsa1]).jwks(clock), now=clock)
    expect_invalid(validator, sign(ec1), "does not publish")  # ES256 header, RSA key


def test_a_signature_from_another_key_with_the_same_kid_fails(validator: BearerValidator) -> None:
    impostor = ec_key("ec-1")
    expect_invalid(validator, sign(impostor), "signature does not verify")


def test_tampered_payload_fails(validator: BearerValidator, key: Key) -> None:
    head, _, sig = sign(key).split(".")
    payload = b64(json.dumps(claims(acr="urn:stepguard:aal3")).encode())
    expect_invalid(validator, f"{head}.{payload}.{sig}", "signature does not verify")


@pytest.mark.parametrize(("headers", "words"), [
    ({"typ": "id_token+jwt"}, "not an access token"),
    ({"crit": ["exp"]}, "header extensions"),
])
def test_headers_are_refused(validator: BearerValidator, key: Key, headers: dict[str, Any],
                             words: str) -> None:
    expect_invalid(validator, sign(key, headers), words)


def test_garbage_and_oversized_tokens(validator: BearerValidator) -> None:
    expect_invalid(validator, forge({"alg": "ES256", "kid": 7}, claims(), b"x"), "")
    expect_invalid(validator, "not.a.jwt", "well-formed")
    expect_invalid(validator, "a" * 9000, "too long")


def test_authorization_header_parsing() -> None:
    assert bearer_credentials(None) is None
    assert bearer_credentials("Basic YWxpY2U6cHc=") is None
    assert bearer_credentials("bearer abc.def-_~+/=") == "abc.def-_~+/="
    for bad in ("Bearer", "Bearer   ", "Bearer a b", "Bearer a\"b"):
        with pytest.raises(InvalidToken) as caught:
            bearer_credentials(bad)
        assert caught.value.code == "invalid_request"


# --- the JWKS cache -----------------------------------------------------------------------------


def test_keys_are_discovered_once_and_cached_for_the_ttl(key: Key, clock: Clock) -> None:
    issuer = Issuer([key])
    jwks = issuer.jwks(clock, ttl=300)
    for _ in range(5):
        jwks.key_for(key.kid, alg="ES256")
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks"]
    clock.now += 301
    jwks.key_for(key.kid, alg="ES256")
    assert issuer.requests[-1] == "/jwks" and jwks.fetches == 2


def test_rotation_refetches_once_and_unknown_kids_are_rate_limited(key: Key, clock: Clock) -> None:
    issuer = Issuer([key])
    jwks = issuer.jwks(clock, refetch_interval=30)
    jwks.key_for(key.kid, alg="ES256")
    rotated = ec_key("ec-2")
    issuer.keys.insert(0, rotated)
    clock.now += 31
    assert jwks.key_for("ec-2", alg="ES256").kid == "ec-2"  # one refetch found the new key
    assert jwks.fetches == 2
    for _ in range(50):  # a flood of made-up kids: no refetch storm
        with pytest.raises(InvalidToken):
            jwks.key_for(secrets.token_hex(4), alg="ES256")
    assert jwks.fetches == 2
    clock.now += 31
    with pytest.raises(InvalidToken):
        jwks.key_for("still-unknown", alg="ES256")
    assert jwks.fetches == 3


def test_concurrent_unknown_kids_cause_one_refetch(key: Key, clock: Clock) -> None:
    issuer = Issuer([key])
    jwks = issuer.jwks(clock)
    jwks.key_for(key.kid, alg="ES256")
    clock.now += 60
    issuer.keys.append(ec_key("new"))
    barrier = threading.Barrier(16)

    def look() -> None:
        barrier.wait()
        jwks.key_for("new", alg="ES256")

    threads = [threading.Thread(target=look) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert jwks.fetches == 2


def test_an_unreachable_issuer_fails_closed(key: Key, clock: Clock) -> None:
    issuer = Issuer([key], up=False)
    jwks = issuer.jwks(clock, refetch_interval=30)
    with pytest.raises(IssuerUnavailable):
        jwks.key_for(key.kid, alg="ES256")
    issuer.up = True
    with pytest.raises(IssuerUnavailable):  # backs off instead of hammering the issuer
        jwks.key_for(key.kid, alg="ES256")
    assert jwks.fetches == 1
    clock.now += 31
    assert jwks.key_for(key.kid, alg="ES256").kid == key.kid
    issuer.up = False
    clock.now += 301  # the cached set expires and cannot be renewed: refuse, don't guess
    with pytest.raises(IssuerUnavailable):
        jwks.key_for(key.kid, alg="ES256")


def test_discovery_must_name_the_configured_issuer(key: Key, clock: Clock) -> None:
    issuer = Issuer([key], issuer="https://evil.test")
    with pytest.raises(IssuerUnavailable, match="another issuer"):
        issuer.jwks(clock).key_for(key.kid, alg="ES256")


def test_symmetric_private_and_encryption_keys_are_never_used(key: Key, clock: Clock) -> None:
    private = ec_key("priv")
    private_jwk = {**json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(private.private)),
                   "kid": "priv"}
    issuer = Issuer([key], extra_jwks=[
        {"kty": "oct", "k": b64(b"secret"), "kid": "oct", "alg": "HS256"},
        private_jwk,
        {**ec_key("enc").jwk(), "use": "enc"},
    ])
    jwks = issuer.jwks(clock)
    for kid in ("oct", "priv", "enc"):
        with pytest.raises(InvalidToken):
            jwks.key_for(kid, alg="ES256")
    assert jwks.key_for(None, alg="ES256").kid == key.kid  # no kid: the one fitting key


def test_a_configured_jwks_uri_skips_discovery(key: Key, clock: Clock) -> None:
    issuer = Issuer([key])
    jwks = issuer.jwks(clock, jwks_uri=f"{ISSUER}/jwks")
    jwks.key_for(key.kid, alg="ES256")
    assert issuer.requests == ["/jwks"]


# --- deciding and answering ---------------------------------------------------------------------


def test_a_weak_token_gets_the_rfc9470_challenge(runtime: Runtime, validator: BearerValidator,
                                                 key: Key) -> None:
    result = check(runtime, validator, sign(key), "/payments/new")
    assert result.decision.outcome is Outcome.STEP_UP and result.status == 401
    header = bearer_challenge(result, runtime)
    assert header is not None
    assert header.startswith('Bearer error="insufficient_user_authentication", error_description="')
    assert 'acr_values="urn:stepguard:aal2 urn:stepguard:aal3"' in header
    assert header.endswith("max_age=300")
    response = bearer_response(result, runtime)
    assert response is not None and response.status_code == 401
    assert response.headers["www-authenticate"] == header
    assert "location" not in response.headers
    body = json.loads(bytes(response.body))
    assert body["error"] == "insufficient_user_authentication" and body["level"] == "aal2"
    assert body["challenge_url"] == ISSUER and "Sending money" in body["reasons"]


def test_a_strong_fresh_token_passes_and_an_old_one_does_not(
        runtime: Runtime, validator: BearerValidator, key: Key) -> None:
    fresh = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 60)
    result = check(runtime, validator, fresh, "/payments/new")
    assert result.allowed and result.status == 200 and bearer_response(result, runtime) is None
    assert result.subject is not None and result.subject.id == "alice"
    old = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 600,
               iat=int(T0) - 20)
    result = check(runtime, validator, old, "/payments/new")
    assert result.status == 401
    assert "older than 5 minutes" in (bearer_challenge(result, runtime) or "")


def test_a_token_without_auth_time_is_stale(runtime: Runtime, validator: BearerValidator,
                                            key: Key) -> None:
    token = sign(key, auth_time=None, acr="urn:stepguard:aal2", amr=["pwd", "otp"])
    assert check(runtime, validator, token, "/reports").allowed  # no max_age: still usable
    for path, max_age in (("/reports/fresh", 3600), ("/payments/x", 300), ("/wire", 0)):
        result = check(runtime, validator, token, path)
        assert result.status == 401, path
        assert (bearer_challenge(result, runtime) or "").endswith(f"max_age={max_age}")


def test_an_authentication_older_than_its_level_lifetime_demands_max_age(
        runtime: Runtime, validator: BearerValidator, key: Key) -> None:
    month = 30 * 86400
    token = sign(key, auth_time=int(T0) - month - 100, iat=int(T0) - 10)
    result = check(runtime, validator, token, "/reports")
    assert result.status == 401
    assert (bearer_challenge(result, runtime) or "").endswith(f"max_age={month}")


def test_invalid_tokens_get_invalid_token(runtime: Runtime, validator: BearerValidator,
                                          key: Key) -> None:
    result = check(runtime, validator, sign(key, aud="https://other.test"), "/public/x")
    assert result.status == 401 and not result.allowed  # even where the policy allows anyone
    response = bearer_response(result, runtime)
    assert response is not None
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="the token is meant for another audience"')
    malformed = decide_bearer(guard_of(runtime), ctx(), "Bearer a b", validator=validator)
    assert malformed.status == 400
    assert 'error="invalid_request"' in (bearer_challenge(malformed, runtime) or "")


def test_no_token_follows_the_policy(runtime: Runtime, validator: BearerValidator) -> None:
    assert decide_bearer(guard_of(runtime), ctx("/public/a"), None, validator=validator).allowed
    result = decide_bearer(guard_of(runtime), ctx("/reports"), "Basic abc", validator=validator)
    assert result.status == 401 and bearer_challenge(result, runtime) == "Bearer"


def test_a_deny_rule_answers_403(runtime: Runtime, validator: BearerValidator, key: Key) -> None:
    result = check(runtime, validator, sign(key, acr="urn:stepguard:aal3"), "/forbidden")
    response = bearer_response(result, runtime)
    assert result.status == 403 and response is not None and response.status_code == 403
    assert bearer_challenge(result, runtime) is None


def test_scoped_rules_are_met_by_the_tokens_own_authentication(
        runtime: Runtime, validator: BearerValidator, key: Key) -> None:
    otp = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"])
    assert check(runtime, validator, otp, "/admin/users").allowed
    password_only = sign(key, acr="urn:stepguard:aal2", amr=["pwd"])
    assert check(runtime, validator, password_only, "/admin/users").status == 401


def test_single_use_spends_one_fresh_authentication_once(
        runtime: Runtime, validator: BearerValidator, key: Key, clock: Clock) -> None:
    fresh = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 5)
    assert check(runtime, validator, fresh, "/wire").allowed
    again = check(runtime, validator, fresh, "/wire")
    assert again.status == 401
    assert (bearer_challenge(again, runtime) or "").endswith("max_age=0")
    # Another token from the same sign-in (same auth_time) cannot spend it again either.
    same_login = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 5)
    assert check(runtime, validator, same_login, "/wire").status == 401
    relogin = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 1)
    assert check(runtime, validator, relogin, "/wire").allowed
    stale = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 120,
                 iat=int(T0) - 100)
    assert check(runtime, validator, stale, "/wire").status == 401  # outside fresh_window


def test_single_use_holds_under_concurrency(runtime: Runtime, validator: BearerValidator,
                                            key: Key) -> None:
    fresh = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 2)
    barrier = threading.Barrier(12)
    outcomes: list[bool] = []

    def spend() -> None:
        barrier.wait()
        outcomes.append(check(runtime, validator, fresh, "/wire").allowed)

    threads = [threading.Thread(target=spend) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 1


def test_bound_transactions_are_refused_for_tokens(runtime: Runtime, validator: BearerValidator,
                                                   key: Key) -> None:
    fresh = sign(key, acr="urn:stepguard:aal3", amr=["hwk", "user"], auth_time=int(T0) - 2)
    result = check(runtime, validator, fresh, "/bound", amount=100)
    assert result.status == 403
    assert any("cannot approve a bound transaction" in r for r in result.decision.reasons)


def test_every_decision_is_audited_without_the_token(runtime: Runtime, validator: BearerValidator,
                                                     key: Key) -> None:
    token = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"])
    check(runtime, validator, token, "/payments/1")
    check(runtime, validator, sign(key, iss="https://evil.test"), "/payments/2")
    runtime.audit.flush(timeout=10)
    entries = list(runtime.audit_log.entries(kind="decision"))
    assert [e.request["path"] for e in entries] == ["/payments/1", "/payments/2"]
    allowed, refused = entries
    assert (allowed.subject, allowed.decision) == ("alice", "allow")
    assert allowed.detail["via"] == "bearer"
    assert allowed.detail["acr"] == "urn:stepguard:aal2" and allowed.session
    assert (refused.outcome, refused.subject) == ("invalid_token", "")
    text = json.dumps([e.__dict__ if hasattr(e, "__dict__") else str(e) for e in entries],
                      default=str)
    assert token not in text and token.split(".")[2] not in text


def test_validator_for_builds_one_validator_per_runtime(runtime: Runtime) -> None:
    first = validator_for(runtime)
    assert first is not None and validator_for(runtime) is first
    assert first.settings.audiences == (AUDIENCE,)
    assert first.settings.acr_values(Level.AAL3) == ("urn:stepguard:aal3",)


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("bearer", "words"), [
    ({"issuer": ISSUER, "audience": "a", "algorithms": ["HS256"]}, "only asymmetric"),
    ({"issuer": ISSUER, "audience": "a", "algorithms": ["none"]}, "only asymmetric"),
    ({"issuer": "http://issuer.example", "audience": "a"}, "https"),
    ({"issuer": ISSUER}, "at least one audience"),
    ({"issuer": ISSUER, "audience": "a", "acr_levels": {"x": "aal9"}}, "aal"),
])
def test_config_refuses_unsafe_bearer_settings(bearer: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        StepguardConfig.model_validate({"bearer": bearer})


# --- cost ---------------------------------------------------------------------------------------


def test_validation_cost_per_token(runtime: Runtime, clock: Clock,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    settings = BearerSettings.from_config(runtime.config.bearer, runtime.policy)
    figures = []
    for key in (ec_key(), rsa_key(), ed_key()):
        validator = BearerValidator(settings, Issuer([key]).jwks(clock), now=clock)
        token = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"])
        validator.validate(token)
        rounds = 1000
        started = time.perf_counter()
        for _ in range(rounds):
            validator.validate(token)
        per_token = (time.perf_counter() - started) / rounds * 1e6
        figures.append(f"{key.alg} {per_token:.0f} µs")
        assert per_token < 3000
    with capsys.disabled():
        print(f"\n  bearer validation per token (cached JWKS): {', '.join(figures)}")


def test_the_bearer_path_spends_single_use_grants_and_audits_every_decision(
        runtime: Runtime, validator: BearerValidator, key: Key) -> None:
    """The bearer door goes through the one decision flow: a single-use grant made from the
    token's authentication is spent in the grant store, and every decision (allow, step-up,
    refused token) is its own audit entry naming the token."""
    fresh = sign(key, acr="urn:stepguard:aal2", amr=["pwd", "otp"], auth_time=int(T0) - 5)
    spent = check(runtime, validator, fresh, "/wire")
    assert spent.allowed and spent.decision.consume_grant == spent.decision.grant_id != ""
    record = runtime.store.grants.get(spent.decision.grant_id)
    assert record is not None and record.consumed_at == T0 and record.grant.single_use
    assert check(runtime, validator, fresh, "/wire").status == 401
    assert check(runtime, validator, sign(key), "/reports").allowed
    assert check(runtime, validator, sign(key, aud="https://other.test"), "/reports").status == 401
    runtime.audit.flush(timeout=5)
    entries = [e for e in runtime.audit_log.entries() if e.kind == "decision"]
    assert [(e.rule, e.decision, e.outcome) for e in entries] == [
        ("wire", "allow", "allow"), ("wire", "step_up", "step_up"),
        ("default", "allow", "allow"), ("bearer-token", "step_up", "invalid_token")]
    first = entries[0]
    assert first.subject == "alice" and first.session == runtime.session_ref(spent.session.id)
    assert first.detail["grant"] == spent.decision.grant_id and first.detail["consumed"] is True
    assert all(e.detail["via"] == "bearer" for e in entries)
    assert entries[2].detail["jti"] and entries[3].detail["error"] == "invalid_token"


# --- edges of parsing and of the issuer's keys ----------------------------------------------------


@pytest.mark.parametrize(("sub", "words"), [("", "`sub` claim is malformed"),
                                            ("a" * 256, "`sub` claim is malformed")])
def test_an_empty_or_huge_subject_is_refused(validator: BearerValidator, key: Key, sub: str,
                                             words: str) -> None:
    expect_invalid(validator, sign(key, sub=sub), words)


def test_tokens_that_are_not_jwts_are_refused(validator: BearerValidator, key: Key) -> None:
    expect_invalid(validator, "only.two", "well-formed")
    expect_invalid(validator, f"{b64(b'[1, 2]')}.{b64(b'{}')}.sig", "well-formed")  # not a dict
    # Properly signed, but the payload is no JSON object: the signature alone proves nothing.
    signed = jwt.api_jws.encode(b"not json", key.private, algorithm=key.alg,
                                headers={"kid": key.kid, "typ": "at+jwt"})
    expect_invalid(validator, signed, "malformed")


def test_amr_may_be_a_space_separated_string_but_not_a_list_of_other_things(
        validator: BearerValidator, key: Key) -> None:
    token = validator.validate(sign(key, acr="urn:stepguard:aal2", amr="pwd otp"))
    assert token.amr == ("pwd", "otp") and token.event.factor == "totp"
    expect_invalid(validator, sign(key, amr=["pwd", 7]), "`amr` claim is not a list of strings")


def test_a_key_source_that_hands_back_an_unfitting_key_is_not_believed(
        runtime: Runtime, clock: Clock, key: Key) -> None:
    """Defence in depth: whatever key source is plugged in, an RSA key never checks ES256."""
    rsa1 = Issuer([rsa_key(key.kid)]).jwks(clock)

    class Careless:
        def key_for(self, kid: str | None, *, alg: str) -> Any:
            return rsa1.key_for(kid, alg="RS256")

    careless = BearerValidator(BearerSettings.from_config(runtime.config.bearer, runtime.policy),
                               Careless(), now=clock)
    expect_invalid(careless, sign(key), "algorithm does not fit")


def test_no_token_on_a_step_up_rule_gets_a_bare_bearer_challenge(
        runtime: Runtime, validator: BearerValidator) -> None:
    result = check(runtime, validator, None, "/payments/new")
    response = bearer_response(result, runtime)
    assert response is not None and response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"  # RFC 6750 §3.1: no error code
    assert json.loads(bytes(response.body))["level"] == "aal2"


def test_keys_only_for_signing_or_broken_are_skipped(key: Key, clock: Clock) -> None:
    broken = {**ec_key("broken").jwk(), "x": "AAAA"}  # not a point on the curve
    issuer = Issuer([key], extra_jwks=[{**ec_key("sign-only").jwk(), "key_ops": ["sign"]},
                                       broken])
    jwks = issuer.jwks(clock)
    for kid in ("sign-only", "broken"):
        with pytest.raises(InvalidToken, match="does not publish"):
            jwks.key_for(kid, alg="ES256")
    assert jwks.key_for(key.kid, alg="ES256").kid == key.kid


@pytest.mark.parametrize(("discovery", "jwks_document", "words"), [
    ({"issuer": ISSUER}, None, "no usable `jwks_uri`"),
    ({"issuer": ISSUER, "jwks_uri": "file:///etc/keys"}, None, "no usable `jwks_uri`"),
    ({"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks"}, {"keys": "none"}, "no `keys` list"),
])
def test_an_issuer_without_a_usable_key_set_fails_closed(
        clock: Clock, discovery: dict[str, Any], jwks_document: Any, words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=discovery)
        return httpx.Response(200, json=jwks_document)

    jwks = JwksCache(issuer=ISSUER, clock=clock,
                     client=httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(IssuerUnavailable, match=words):
        jwks.key_for("any", alg="ES256")


@pytest.mark.parametrize("overrides", [
    pytest.param({"acr": "urn:stepguard:aal1"}, id="level-too-low"),
    pytest.param({"acr": "urn:stepguard:aal2", "auth_time": int(T0) - 25 * 3600,
                  "iat": int(T0) - 10}, id="past-the-level-lifetime"),
])
def test_a_token_whose_authentication_cannot_count_makes_no_single_use_grant(
        runtime: Runtime, validator: BearerValidator, key: Key,
        overrides: dict[str, Any]) -> None:
    token = sign(key, amr=["pwd", "otp"], **overrides)
    result = check(runtime, validator, token, "/wire")
    assert result.status == 401 and not result.allowed
    assert runtime.store.grants.active_for_session(result.token.state.id, now=T0) == ()  # type: ignore[union-attr]
