"""RFC 9470 step-up end to end, against a real OpenID provider (oidc-provider on Node.js).

The provider (tests/e2e/oidc/provider.mjs) runs on a free loopback port with signing keys made
here, and issues JWT access tokens for a resource server. A client drives the authorization code
flow with PKCE over plain HTTP (no browser: the provider's interaction endpoint is completed by
a tiny middleware playing the user), then calls a protected Starlette app that asks Stepguard
(`decide_bearer`) with the policy below. The client meets the RFC 9470 challenge, re-authorizes
with the challenge's `acr_values` and `max_age`, and gets through — and the attacks (`alg: none`,
HS256 keyed with the public key, a wrong audience, another issuer, an expired token, an unknown
`kid`) are refused, while a real key rotation is followed.

Needs Node.js and the npm registry once: `npm ci` installs the committed lockfile into
tests/e2e/oidc/node_modules (gitignored), reused while package-lock.json is unchanged. If npm
cannot install it, the tests skip — or fail, when `CI` is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from stepguard.adapters.bearer import (
    BearerValidator,
    bearer_response,
    decide_bearer,
    validator_for,
)
from stepguard.adapters.http_context import build_context
from stepguard.config.load import load_config
from stepguard.core.errors import InvalidToken
from stepguard.service.guard import Guard
from stepguard.service.runtime import Runtime, build_runtime
from tests.support.servers import Process, free_port

pytestmark = pytest.mark.e2e

OIDC_DIR = Path(__file__).parent / "oidc"
STAMP = OIDC_DIR / "node_modules" / ".stepguard-lock-sha256"
AUDIENCE = "https://api.stepguard.test"
OTHER_AUDIENCE = "https://other.stepguard.test"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never served: the client stops at the redirect
CLIENT_ID = "stepguard-e2e"
AAL1, AAL2, AAL3 = (f"urn:stepguard:aal{n}" for n in (1, 2, 3))

POLICY = """\
levels:
  aal2: {acr: "urn:stepguard:aal2", max_session: 24h, idle: 1h}
  aal3: {acr: "urn:stepguard:aal3", max_session: 12h, idle: 15m}
rules:
  - name: payments
    match: {paths: ["/payments/**"]}
    require: {level: aal2, max_age: 5m, reason: "Sending money"}
  - name: fresh-reports
    match: {paths: ["/reports/fresh"]}
    require: {level: aal1, max_age: 1h, reason: "Reading fresh reports"}
default: {level: aal1}
"""


@pytest.fixture(autouse=True)
def _demo_log_on_failure() -> None:
    """Overrides tests/e2e/conftest.py's autouse fixture of the same name, which would start
    the browser tests' demo server for these tests too; they need no demo."""


# --- Node.js and the provider -------------------------------------------------------------------


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the OpenID provider: {message}")
    pytest.skip(message)


def _install_provider() -> str:
    """`npm ci` into tests/e2e/oidc/node_modules unless it already matches the lockfile."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("Node.js and npm are needed for the OpenID provider")
    assert node is not None and npm is not None
    lock = hashlib.sha256((OIDC_DIR / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == lock:
        return node
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                            cwd=OIDC_DIR, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        _unavailable("`npm ci` in tests/e2e/oidc failed (is the npm registry reachable?)\n"
                     + (result.stdout + result.stderr)[-2000:])
    STAMP.write_text(lock)
    return node


def signing_key(kid: str) -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(private))
    return {**jwk, "kid": kid, "use": "sig", "alg": "ES256"}


class Provider:
    """One oidc-provider process; `restart(keys)` keeps the port (and so the issuer)."""

    def __init__(self, node: str, workdir: Path, keys: list[dict[str, Any]]) -> None:
        self.node, self.workdir, self.keys = node, workdir, keys
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None

    def start(self) -> Provider:
        jwks_file = self.workdir / f"jwks-{self.port}.json"
        jwks_file.write_text(json.dumps({"keys": self.keys}))
        jwks_file.chmod(0o600)
        env = {**os.environ, "OIDC_PORT": str(self.port), "OIDC_JWKS_FILE": str(jwks_file),
               "OIDC_AUDIENCE": AUDIENCE, "OIDC_OTHER_AUDIENCE": OTHER_AUDIENCE,
               "OIDC_REDIRECT_URI": REDIRECT_URI, "NODE_ENV": "test"}
        self.process = Process([self.node, "provider.mjs"], port=self.port, workdir=self.workdir,
                               name=f"oidc-{self.port}", env=env, cwd=OIDC_DIR,
                               ready_path="/.well-known/openid-configuration").start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self, keys: list[dict[str, Any]]) -> None:
        self.stop()
        self.keys = keys
        self.start()


@pytest.fixture(scope="module")
def node() -> str:
    return _install_provider()


@pytest.fixture(scope="module")
def first_key() -> dict[str, Any]:
    return signing_key("key-1")


@pytest.fixture(scope="module")
def provider(node: str, first_key: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    running = Provider(node, tmp_path_factory.mktemp("oidc"), [first_key]).start()
    yield running
    running.stop()


# --- Stepguard and the protected application ----------------------------------------------------


@pytest.fixture(scope="module")
def runtime(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("stepguard")
    (folder / "policy.yaml").write_text(POLICY)
    totp = base64.b64encode(secrets.token_bytes(32)).decode()
    (folder / "stepguard.yaml").write_text(f"""
policy: policy.yaml
store: {{url: "sqlite:///stepguard.db"}}
secrets: {{cookie_key: "{secrets.token_urlsafe(32)}", totp_keys: {{k1: "{totp}"}},
           totp_current: k1}}
bearer:
  issuer: "{provider.issuer}"
  audience: "{AUDIENCE}"
  algorithms: [ES256]
  groups_claim: groups
  jwks_refetch_interval: 1s
""")
    rt = build_runtime(load_config(folder / "stepguard.yaml"))
    yield rt
    rt.close()


def protected_app(runtime: Runtime) -> Starlette:
    """An API guarded by Stepguard: any path, decided by the policy from the bearer token."""

    guard = Guard(runtime)

    async def endpoint(request: Request) -> Response:
        context = build_context(method=request.method, scheme="https", host="api.stepguard.test",
                                target=request.url.path, client_ip="127.0.0.1",
                                headers=request.headers)
        check = await run_in_threadpool(decide_bearer, guard, context,
                                        request.headers.get("authorization"))
        refusal = bearer_response(check, runtime)
        if refusal is not None:
            return refusal
        assert check.token is not None
        return JSONResponse({"sub": check.token.subject.id, "acr": check.token.acr,
                             "amr": list(check.token.amr), "auth_time": check.token.auth_time,
                             "groups": sorted(check.token.subject.groups)})

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def api(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(protected_app(runtime), base_url="https://api.stepguard.test") as client:
        yield client


# --- the OAuth client ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class OAuthClient:
    """Authorization code + PKCE over plain HTTP, following the provider's redirects."""

    issuer: str
    http: httpx.Client

    def endpoints(self) -> dict[str, Any]:
        response = self.http.get(f"{self.issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        return dict(response.json())

    def authorize(self, **params: str) -> str:
        """An access token for this request's parameters (acr_values, max_age, claims...)."""
        meta = self.endpoints()
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        query = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI,
                 "scope": "openid profile", "state": state, "code_challenge_method": "S256",
                 "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()), **params}
        location = self._follow(f"{meta['authorization_endpoint']}?{urlencode(query)}")
        answer = parse_qs(urlsplit(location).query)
        assert answer.get("state") == [state], answer
        assert "code" in answer, answer
        form = {"grant_type": "authorization_code", "code": answer["code"][0],
                "redirect_uri": REDIRECT_URI, "code_verifier": verifier, "client_id": CLIENT_ID}
        if "resource" in params:
            form["resource"] = params["resource"]
        response = self.http.post(meta["token_endpoint"], data=form)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def _follow(self, url: str) -> str:
        for _ in range(10):
            response = self.http.get(url)
            assert response.status_code in (302, 303), (response.status_code, response.text)
            url = urljoin(url, response.headers["location"])
            if url.startswith(REDIRECT_URI):
                return url
        raise AssertionError("too many redirects")


@pytest.fixture
def client(provider: Provider) -> Iterator[OAuthClient]:
    with httpx.Client(timeout=10.0, follow_redirects=False) as http:
        yield OAuthClient(provider.issuer, http)


def challenge(response: httpx.Response) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer ...` header."""
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer ")
    return {k: v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', header)}


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the step-up flow ---------------------------------------------------------------------------


def test_rfc9470_step_up_with_a_real_openid_provider(api: TestClient,
                                                     client: OAuthClient) -> None:
    weak = client.authorize(acr_values=AAL1)
    assert claims_of(weak)["acr"] == AAL1 and claims_of(weak)["aud"] == AUDIENCE
    everyday = api.get("/reports", headers=bearer(weak))
    assert everyday.status_code == 200 and everyday.json()["groups"] == ["staff"]

    refused = api.get("/payments/42", headers=bearer(weak))
    assert refused.status_code == 401
    asked = challenge(refused)
    assert asked["error"] == "insufficient_user_authentication"
    assert asked["acr_values"] == f"{AAL2} {AAL3}" and asked["max_age"] == "300"
    assert "Sending money" in asked["error_description"]

    # acr_values is only a request: the provider reuses the fresh aal1 sign-in silently, and
    # Stepguard holds the line because the token's acr is still aal1.
    reused = client.authorize(acr_values=asked["acr_values"], max_age=asked["max_age"])
    assert claims_of(reused)["acr"] == AAL1 and "auth_time" in claims_of(reused)
    assert api.get("/payments/42", headers=bearer(reused)).status_code == 401

    # Asking for the acr as an essential claim (OpenID Core §5.5.1.1) makes the provider
    # authenticate again. (Sent beside `acr_values`, oidc-provider lets `acr_values` replace it
    # with a voluntary request; `prompt=login` would also do.)
    wanted = asked["acr_values"].split()
    essential = json.dumps({"id_token": {"acr": {"essential": True, "values": wanted}}})
    strong = client.authorize(claims=essential, max_age=asked["max_age"])
    stepped = claims_of(strong)
    assert stepped["acr"] == AAL2 and stepped["amr"] == ["pwd", "otp"]
    assert abs(stepped["auth_time"] - time.time()) < 30
    granted = api.get("/payments/42", headers=bearer(strong))
    assert granted.status_code == 200, granted.text
    assert granted.json()["acr"] == AAL2 and granted.json()["sub"] == "alice"


def test_a_token_without_auth_time_is_stale(api: TestClient, client: OAuthClient) -> None:
    token = client.authorize(acr_values=AAL1)
    assert "auth_time" not in claims_of(token)
    assert api.get("/reports", headers=bearer(token)).status_code == 200  # no max_age here
    refused = api.get("/reports/fresh", headers=bearer(token))
    assert refused.status_code == 401  # aal1 is enough, but its age is unknown
    asked = challenge(refused)
    assert asked["max_age"] == "3600" and asked["acr_values"].startswith(AAL1)
    fresh = client.authorize(acr_values=asked["acr_values"], max_age=asked["max_age"])
    assert "auth_time" in claims_of(fresh)
    assert api.get("/reports/fresh", headers=bearer(fresh)).status_code == 200


# --- refused tokens -----------------------------------------------------------------------------


def expect_invalid_token(api: TestClient, token: str, words: str) -> None:
    response = api.get("/reports", headers=bearer(token))
    assert response.status_code == 401, response.text
    asked = challenge(response)
    assert asked["error"] == "invalid_token"
    assert words in asked["error_description"], asked


def test_a_token_for_another_audience_is_refused(api: TestClient, client: OAuthClient) -> None:
    token = client.authorize(acr_values=AAL2, resource=OTHER_AUDIENCE)
    assert claims_of(token)["aud"] == OTHER_AUDIENCE
    expect_invalid_token(api, token, "another audience")


def test_forged_algorithms_are_refused(api: TestClient, client: OAuthClient,
                                       first_key: dict[str, Any]) -> None:
    real = client.authorize(acr_values=AAL1)
    payload = {**claims_of(real), "acr": AAL3}
    body = b64url(json.dumps(payload).encode())

    def header(alg: str) -> str:
        return b64url(json.dumps({"alg": alg, "typ": "at+jwt", "kid": "key-1"}).encode())

    expect_invalid_token(api, f"{header('none')}.{body}.", "algorithm is not allowed")
    public_pem = jwt.get_algorithm_by_name("ES256").from_jwk(first_key).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{header('HS256')}.{body}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    expect_invalid_token(api, f"{signing_input}.{b64url(mac)}", "algorithm is not allowed")
    tampered = real.split(".")
    expect_invalid_token(api, f"{tampered[0]}.{body}.{tampered[2]}", "signature does not verify")


def test_an_expired_token_is_refused(runtime: Runtime, client: OAuthClient) -> None:
    token = client.authorize(acr_values=AAL1)
    shared = validator_for(runtime)
    assert shared is not None
    assert shared.validate(token).subject.id == "alice"
    later = BearerValidator(shared.settings, shared.jwks, now=lambda: time.time() + 400)
    with pytest.raises(InvalidToken, match="expired"):
        later.validate(token)  # the provider's tokens live 300 s; leeway is 30 s


def test_a_token_from_another_issuer_with_the_same_key_is_refused(
        api: TestClient, node: str, first_key: dict[str, Any],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    other = Provider(node, tmp_path_factory.mktemp("oidc-other"), [first_key]).start()
    try:
        with httpx.Client(timeout=10.0, follow_redirects=False) as http:
            token = OAuthClient(other.issuer, http).authorize(acr_values=AAL2)
    finally:
        other.stop()
    assert jwt.get_unverified_header(token)["kid"] == "key-1"  # a key Stepguard trusts
    expect_invalid_token(api, token, "another issuer")


def test_unknown_kid_and_key_rotation(api: TestClient, client: OAuthClient, runtime: Runtime,
                                      provider: Provider, first_key: dict[str, Any]) -> None:
    validator = validator_for(runtime)
    assert validator is not None
    old = client.authorize(acr_values=AAL1)
    assert api.get("/reports", headers=bearer(old)).status_code == 200
    jwks = validator.jwks
    assert hasattr(jwks, "fetches")
    before = jwks.fetches

    # A token whose kid the issuer never published: refused, at most one refetch.
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims_of(old), attacker, algorithm="ES256",
                        headers={"kid": "made-up", "typ": "at+jwt"})
    for _ in range(5):
        expect_invalid_token(api, forged, "does not publish")
    assert jwks.fetches - before <= 1
    started = time.monotonic()  # after the last refetch this loop may have made

    # The provider rotates: a new signing key first, the old one still published.
    rotated = signing_key("key-2")
    provider.restart([rotated, first_key])
    time.sleep(max(0.0, 1.05 - (time.monotonic() - started)))  # the 1 s refetch interval
    new = client.authorize(acr_values=AAL1)
    assert jwt.get_unverified_header(new)["kid"] == "key-2"
    fetched = jwks.fetches
    assert api.get("/reports", headers=bearer(new)).status_code == 200
    assert jwks.fetches == fetched + 1  # exactly one refetch found key-2
    assert api.get("/reports", headers=bearer(old)).status_code == 200  # key-1 still published
    assert jwks.fetches == fetched + 1
