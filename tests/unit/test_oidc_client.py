"""The relying party's answers to a provider's bad documents and tokens (the network is an
httpx MockTransport here; the full flows run against real providers in tests/integration and
tests/e2e)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from stepguard.config.schema import OidcProvider
from stepguard.core.errors import IssuerUnavailable
from stepguard.service.oidc import IdToken, OidcClient, OidcRefused, ProviderUnreachable

ISSUER = "https://idp.example"
NOW = 1_900_000_000.0
KEY = ECKey.generate_key("P-256", parameters={"kid": "k1", "use": "sig", "alg": "ES256"})


def document(**changes: Any) -> dict[str, Any]:
    doc = {"issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/authorize",
           "token_endpoint": f"{ISSUER}/token", "jwks_uri": f"{ISSUER}/jwks",
           "userinfo_endpoint": f"{ISSUER}/userinfo", "end_session_endpoint": f"{ISSUER}/logout",
           "code_challenge_methods_supported": ["S256"]}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def client_for(routes: dict[str, Any], **settings: Any) -> OidcClient:
    def answer(request: httpx.Request) -> httpx.Response:
        found = routes.get(request.url.path)
        if found is None:
            return httpx.Response(404)
        if isinstance(found, Exception):
            raise found
        return found if isinstance(found, httpx.Response) else httpx.Response(200, json=found)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    provider = OidcProvider(name="corp", issuer=ISSUER, client_id="sg",
                            **{"algorithms": ["ES256"], **settings})
    return OidcClient.discover(provider, redirect_uri="https://sg.example/oidc/corp/callback",
                               clock=lambda: NOW, http=http)


def ok_routes(**extra: Any) -> dict[str, Any]:
    return {"/.well-known/openid-configuration": document(),
            "/jwks": KeySet([KEY]).as_dict(private=False), **extra}


@pytest.mark.parametrize(("answer", "message"), [
    (httpx.ConnectError("refused"), "ConnectError"),
    (httpx.Response(500), "answered 500"),
    (httpx.Response(200, content=b"<html>"), "is not JSON"),
    (httpx.Response(200, json=[1]), "not a JSON object"),
    (document(issuer="https://evil.example"), "names the issuer"),
    (document(token_endpoint=None), "no usable token_endpoint"),
    (document(jwks_uri="ftp://x"), "no usable jwks_uri"),
    (document(code_challenge_methods_supported=["plain"]), "PKCE S256"),
])
def test_discovery_problems_say_what_was_tried(answer: Any, message: str) -> None:
    with pytest.raises(ProviderUnreachable) as error:
        client_for({"/.well-known/openid-configuration": answer})
    assert message in str(error.value)
    assert f"{ISSUER}/.well-known/openid-configuration" in str(error.value)


def test_http_endpoints_are_refused_for_an_https_issuer() -> None:
    client = client_for(ok_routes(**{"/.well-known/openid-configuration": document(
        end_session_endpoint="http://idp.example/logout")}))
    assert client.metadata.end_session_endpoint == ""
    assert client.end_session_url(id_token_hint="", post_logout_redirect_uri="x", state="s") == ""


def test_the_authorization_request_asks_for_what_the_step_up_needs() -> None:
    from stepguard.service.oidc import AuthorizationRequest

    client = client_for(ok_routes(**{"/.well-known/openid-configuration": document(
        claims_parameter_supported=True)}))
    url = client.authorization_url(AuthorizationRequest(
        state="st", nonce="no", code_verifier="v" * 64, max_age=0, prompt="login",
        acr_values="urn:a urn:b", essential_acr=True))
    query = dict(httpx.URL(url).params)
    assert query["code_challenge_method"] == "S256" and query["max_age"] == "0"
    assert query["prompt"] == "login" and query["acr_values"] == "urn:a urn:b"
    assert json.loads(query["claims"]) == {"id_token": {
        "auth_time": {"essential": True}, "acr": {"essential": True, "values": ["urn:a", "urn:b"]}}}
    assert query["scope"].split() == ["openid", "profile", "email"]


@pytest.mark.parametrize("announced", [True, False])
def test_an_auth_context_is_asked_for_as_an_essential_acrs_claim(announced: bool) -> None:
    from stepguard.service.oidc import AuthorizationRequest

    client = client_for(ok_routes(**{"/.well-known/openid-configuration": document(
        claims_parameter_supported=announced)}))
    url = client.authorization_url(AuthorizationRequest(
        state="st", nonce="no", code_verifier="v" * 64, max_age=600, auth_context="c1"))
    claims = json.loads(dict(httpx.URL(url).params)["claims"])["id_token"]
    assert claims["acrs"] == {"essential": True, "value": "c1"}
    assert ("auth_time" in claims) is announced


def test_the_response_issuer_check() -> None:
    client = client_for(ok_routes())
    client.check_response_issuer(None)  # not announced: may be absent
    client.check_response_issuer(ISSUER)
    with pytest.raises(OidcRefused):
        client.check_response_issuer("https://idp.example.evil")


@pytest.mark.parametrize("raw", ["", "a.b", "a.b.c", "x" * 20_000, "e30.e30.", "!!.!!.!!"])
def test_malformed_tokens_are_refused_not_crashed(raw: str) -> None:
    client = client_for(ok_routes())
    with pytest.raises(OidcRefused):
        client.id_token(raw, nonce="n")
    with pytest.raises(OidcRefused):
        client.logout_token(raw)


def test_a_token_naming_its_own_key_is_refused() -> None:
    client = client_for(ok_routes())
    token = jwt.encode({"alg": "ES256", "kid": "k1", "jku": "https://evil.example/jwks"},
                       {"iss": ISSUER}, KEY)
    with pytest.raises(OidcRefused, match="its own key"):
        client.id_token(token, nonce="n")


def test_a_logout_token_with_another_typ_is_refused() -> None:
    client = client_for(ok_routes())
    token = jwt.encode({"alg": "ES256", "kid": "k1", "typ": "at+jwt"},
                       {"iss": ISSUER, "aud": "sg", "iat": int(NOW), "exp": int(NOW) + 60,
                        "jti": "j", "sub": "s",
                        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}},
                       KEY)
    with pytest.raises(OidcRefused, match="typ"):
        client.logout_token(token)


def idtoken() -> IdToken:
    return IdToken(issuer=ISSUER, subject="alice", claims={"sub": "alice", "acr": "a"}, acr="a",
                   amr=(), auth_time=NOW, sid="", raw="")


@pytest.mark.parametrize(("answer", "error"), [
    (httpx.Response(401), OidcRefused),
    (httpx.Response(200, content=b"not json"), OidcRefused),
    (httpx.Response(200, json=["alice"]), OidcRefused),
    (httpx.Response(200, json={"sub": 7}), OidcRefused),
    (httpx.ConnectError("down"), IssuerUnavailable),
])
def test_userinfo_problems(answer: Any, error: type[Exception]) -> None:
    client = client_for(ok_routes(**{"/userinfo": answer}))
    with pytest.raises(error):
        client.with_userinfo(idtoken(), "access")


def test_userinfo_is_skipped_without_endpoint_or_access_token() -> None:
    client = client_for(ok_routes(**{"/.well-known/openid-configuration": document(
        userinfo_endpoint=None)}))
    assert client.with_userinfo(idtoken(), "access") == idtoken()
    assert client_for(ok_routes()).with_userinfo(idtoken(), None) == idtoken()


def test_userinfo_adds_only_missing_unprotected_claims() -> None:
    client = client_for(ok_routes(**{"/userinfo": {"sub": "alice", "acr": "high",
                                                   "email": "a@x", "auth_time": 1}}))
    merged = client.with_userinfo(idtoken(), "access")
    assert merged.claims == {"sub": "alice", "acr": "a", "email": "a@x"}


def _claims(**changes: Any) -> dict[str, Any]:
    claims = {"iss": ISSUER, "aud": "sg", "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 300,
              "nonce": "n", "auth_time": int(NOW) - 5}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(("kind", "alg"), [("RSA", "RS256"), ("OKP", "EdDSA")])
def test_rsa_and_ed25519_providers_are_verified_too(kind: str, alg: str) -> None:
    from joserfc.jwk import OKPKey, RSAKey

    key = (RSAKey.generate_key(2048, parameters={"kid": "r1", "use": "sig", "alg": alg})
           if kind == "RSA" else
           OKPKey.generate_key("Ed25519", parameters={"kid": "r1", "use": "sig", "alg": alg}))
    routes = {"/.well-known/openid-configuration": document(),
              "/jwks": KeySet([key]).as_dict(private=False)}
    client = client_for(routes, algorithms=[alg])
    token = client.id_token(jwt.encode({"alg": alg, "kid": "r1"}, _claims(), key,
                                       algorithms=[alg]), nonce="n")
    assert token.subject == "alice"
    other = (RSAKey.generate_key(2048, parameters={"kid": "r1"}) if kind == "RSA"
             else OKPKey.generate_key("Ed25519", parameters={"kid": "r1"}))
    with pytest.raises(OidcRefused):  # the same kid, another key: the signature fails
        client.id_token(jwt.encode({"alg": alg, "kid": "r1"}, _claims(), other,
                                   algorithms=[alg]), nonce="n")


@pytest.mark.parametrize(("changes", "code"), [
    ({"iat": int(NOW) + 3600}, "claims"),  # refused by the claims registry already
    ({"sub": "s" * 256}, "sub"),
    ({"azp": "another-client"}, "claims"),
    ({"nonce": "other"}, "claims"),
])
def test_id_token_claims_are_refused_with_their_reason(changes: dict[str, Any], code: str) -> None:
    client = client_for(ok_routes())
    raw = jwt.encode({"alg": "ES256", "kid": "k1"}, _claims(**changes), KEY)
    with pytest.raises(OidcRefused) as refused:
        client.id_token(raw, nonce="n")
    assert refused.value.code == code, refused.value.reason
