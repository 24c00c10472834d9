"""Sign-in with identity providers, over HTTP: the bundled OpenID provider (a real server) and
Stepguard (a real server), a browser-like client between them. Each attack is a test that fails
if the hole exists."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepguard.config.load import load_config
from stepguard.core.errors import ConfigError
from stepguard.demo.idp import User
from stepguard.gateway import create_app
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import build_runtime
from tests.support.gateway import write_config
from tests.support.oidc import CLIENT_ID, Site, forward_auth, provider_config, query, serve_site
from tests.support.servers import free_port

STRICT = ("      username_prefix: \"strict:\"\n      allowed_groups: [staff]\n"
          "      allowed_domains: [example.com]\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with serve_site(tmp_path_factory.mktemp("oidc"), {
        "corp": {"config": "      step_up: either\n"},
        "partner": {"config": "      username_prefix: \"partner:\"\n"
                               "      backchannel_logout: false\n"},
        "lax": {"honour_acr": False, "config": "      username_prefix: \"lax:\"\n"
                                               "      step_up: idp\n"},
        "strict": {"config": STRICT},
    }) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_hooks(site: Site) -> Iterator[None]:
    yield
    for idp in site.idps.values():
        idp.id_token_hook = None
        idp.userinfo_hook = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _challenge(response: Any) -> str:
    assert response.status_code in (302, 303), response.text[:300]
    location = response.headers["location"]
    assert "/step-up/" in location, location
    return location[location.index("/step-up/"):]


# --- sign-in, users, groups, levels ------------------------------------------------------------


def test_sign_in_creates_the_user_from_claims_and_maps_groups(site: Site) -> None:
    browser = site.browser()
    done = browser.sign_in("corp", user="alice", method="pwd", rd="https://app.test/home")
    assert done.status_code == 303, done.text[:300]
    assert done.headers["location"] == "https://app.test/home"
    user = site.runtime.store.users.by_username("alice")
    assert user is not None and user.password_hash == ""
    assert user.groups == frozenset({"staff", "engineering"})
    assert user.email == "alice@example.com" and user.display_name == "Alice Idp"
    allowed = forward_auth(browser, "/staff/page")
    assert allowed.status_code == 200
    assert allowed.headers["remote-user"] == "alice"


def test_groups_follow_the_provider_at_each_login(site: Site) -> None:
    idp = site.idps["corp"]
    idp.users["sub-bob"].groups = ["staff"]
    browser = site.browser()
    assert browser.sign_in("corp", user="bob").status_code == 303
    assert forward_auth(browser, "/staff/x").status_code == 200
    idp.users["sub-bob"].groups = ["contractors"]
    again = site.browser()
    assert again.sign_in("corp", user="bob").status_code == 303
    user = site.runtime.store.users.by_username("bob")
    assert user is not None and user.groups == frozenset({"contractors"})
    assert forward_auth(again, "/staff/x").status_code == 403


def test_a_passkey_at_the_provider_counts_as_a_passkey(site: Site) -> None:
    weak, strong = site.browser(), site.browser()
    assert weak.sign_in("corp", method="pwd").status_code == 303
    assert strong.sign_in("corp", method="phr").status_code == 303
    assert forward_auth(weak, "/passkey/x").status_code == 302
    assert forward_auth(strong, "/passkey/x").status_code == 200
    assert forward_auth(strong, "/idp-strong/x").status_code == 200  # aal3 within 10 minutes


def test_the_login_page_has_one_button_per_provider(site: Site) -> None:
    page = site.browser().get("/login")
    for name in ("corp", "partner", "lax", "strict"):
        assert f'action="/oidc/{name}/start?rd=' in page.text
    assert 'name="password"' in page.text


# --- step-up at the provider ------------------------------------------------------------------


def test_step_up_at_the_provider_with_a_stronger_sign_in(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", method="pwd")
    cid_url = _challenge(forward_auth(browser, "/idp-strong/report"))
    page = browser.get(cid_url)
    assert "Confirm at your identity provider" in page.text
    done = browser.step_up_at_provider(cid_url, method="mfa")
    assert done.status_code == 303, done.text[:400]
    assert done.headers["location"] == "https://app.test/idp-strong/report"
    assert forward_auth(browser, "/idp-strong/report").status_code == 200


def test_a_provider_that_ignores_acr_values_does_not_satisfy_the_rule(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("lax", method="pwd")
    cid_url = _challenge(forward_auth(browser, "/idp-strong/x"))
    refused = browser.step_up_at_provider(cid_url, method="pwd")  # lax accepts the weak login
    assert refused.status_code == 403
    assert "needs aal2" in refused.text
    assert forward_auth(browser, "/idp-strong/x").status_code == 302


def test_an_auth_time_older_than_max_age_is_refused(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", method="pwd")
    cid_url = _challenge(forward_auth(browser, "/idp-strong/x"))

    def stale(header: dict[str, Any], claims: dict[str, Any]) -> Any:
        return header, {**claims, "auth_time": int(time.time()) - 3600}

    site.idps["corp"].id_token_hook = stale
    refused = browser.step_up_at_provider(cid_url, method="mfa")
    assert refused.status_code == 403 and "older sign-in" in refused.text
    assert forward_auth(browser, "/idp-strong/x").status_code == 302


def test_a_fresh_proof_rule_sends_prompt_login_and_checks_it(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", method="mfa")
    cid_url = _challenge(forward_auth(browser, "/idp-fresh/pay", method="POST"))
    page = browser.get(cid_url)
    start = browser.post(f"{cid_url}/idp", {"csrf_token": browser.csrf(page)})
    request = query(start.headers["location"])
    assert request["prompt"] == "login" and request["max_age"] == "0"
    assert "urn:demo-idp:mfa" in request["acr_values"]
    assert json.loads(request["claims"])["id_token"]["acr"]["essential"] is True
    # An IdP that reuses the old sign-in despite prompt=login: auth_time before the request.
    site.idps["corp"].id_token_hook = lambda h, c: (h, {**c, "auth_time": c["auth_time"] - 120})
    refused = browser.at_provider(start, method="mfa")
    refused = browser.get(refused.headers["location"])
    assert refused.status_code == 403
    assert "older sign-in" in refused.text or "did not ask you to sign in again" in refused.text
    assert forward_auth(browser, "/idp-fresh/pay", method="POST").status_code == 303


def test_rule_via_local_offers_no_provider_and_via_idp_refuses_local_codes(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", method="pwd")
    local = browser.get(_challenge(forward_auth(browser, "/local-strong/x")))
    assert "Confirm at your identity provider" not in local.text
    cid_url = _challenge(forward_auth(browser, "/idp-strong/x"))
    page = browser.get(cid_url)
    refused = browser.post(f"{cid_url}/totp", {"csrf_token": browser.csrf(page), "code": "123456"})
    assert refused.status_code in (401, 403)
    assert forward_auth(browser, "/idp-strong/x").status_code == 302


def test_step_up_as_another_user_at_the_provider_is_refused(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", user="alice", method="pwd")
    cid_url = _challenge(forward_auth(browser, "/idp-strong/x"))
    page = browser.get(cid_url)
    start = browser.post(f"{cid_url}/idp", {"csrf_token": browser.csrf(page)})
    browser.http.cookies.delete("demo_idp_sso")
    back = browser.at_provider(start, user="bob", method="mfa")
    refused = browser.get(back.headers["location"])
    assert refused.status_code == 403 and "another account" in refused.text


# --- attacks on the callback ------------------------------------------------------------------


def test_wrong_or_missing_state_is_refused(site: Site) -> None:
    browser = site.browser()
    back = browser.at_provider(browser.start_login("corp"))
    params = query(back.headers["location"])
    for state in ("", "forged-state"):
        url = f"/oidc/corp/callback?code={params['code']}&iss={params['iss']}&state={state}"
        assert browser.get(url).status_code == 403
    assert site.browser().get("/oidc/corp/callback?code=x").status_code == 403


def test_a_replayed_callback_and_a_replayed_code_are_refused(site: Site) -> None:
    browser = site.browser()
    back = browser.at_provider(browser.start_login("corp"))
    assert browser.get(back.headers["location"]).status_code == 303
    assert browser.get(back.headers["location"]).status_code == 403  # state used once
    # The same code under a new flow of the same browser: the provider refuses it.
    old_code = query(back.headers["location"])["code"]
    fresh = browser.at_provider(browser.start_login("corp"))
    params = query(fresh.headers["location"])
    injected = (f"/oidc/corp/callback?code={old_code}&state={params['state']}"
                f"&iss={params['iss']}")
    refused = browser.get(injected)
    assert refused.status_code == 403 and "invalid_grant" in refused.text


def test_a_callback_in_another_browser_is_refused(site: Site) -> None:
    attacker = site.browser()
    back = attacker.at_provider(attacker.start_login("corp"), user="bob")
    victim = site.browser()
    refused = victim.get(back.headers["location"])  # login CSRF: the attacker's code
    assert refused.status_code == 403 and "another browser" in refused.text
    assert "stepguard_session" not in refused.headers.get("set-cookie", "")


@pytest.mark.parametrize("change", [
    pytest.param(lambda c: {**c, "nonce": "attacker-nonce"}, id="nonce-mismatch"),
    pytest.param(lambda c: {k: v for k, v in c.items() if k != "nonce"}, id="nonce-missing"),
    pytest.param(lambda c: {**c, "aud": "another-client"}, id="aud-other-client"),
    pytest.param(lambda c: {**c, "aud": [CLIENT_ID, "another-client"]}, id="aud-extra"),
    pytest.param(lambda c: {**c, "aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID},
                 id="aud-extra-with-azp"),
    pytest.param(lambda c: {**c, "azp": "another-client"}, id="azp-other-client"),
    pytest.param(lambda c: {**c, "iss": "http://127.0.0.1:9/"}, id="iss-other"),
    pytest.param(lambda c: {**c, "exp": int(time.time()) - 600, "iat": int(time.time()) - 900},
                 id="expired"),
    pytest.param(lambda c: {**c, "iat": int(time.time()) + 3600}, id="iat-future"),
    pytest.param(lambda c: {**c, "iat": int(time.time()) - 7200, "exp": int(time.time()) + 60},
                 id="iat-too-old"),
    pytest.param(lambda c: {**c, "auth_time": int(time.time()) + 3600}, id="auth-time-future"),
    pytest.param(lambda c: {**c, "sub": ""}, id="sub-empty"),
    pytest.param(lambda c: {**c, "sub": "s" * 256}, id="sub-too-long"),
    pytest.param(lambda c: {**c, "events": {"x": {}}}, id="logout-token-shape"),
])
def test_a_bad_id_token_is_refused(site: Site, change: Any) -> None:
    site.idps["corp"].id_token_hook = lambda header, claims: (header, change(claims))
    refused = site.browser().sign_in("corp", user="alice")
    assert refused.status_code == 403, refused.text[:300]
    assert "stepguard_session" not in refused.headers.get("set-cookie", "")


def test_alg_none_and_hs256_keyed_with_the_public_key_are_refused(site: Site) -> None:
    idp = site.idps["corp"]
    public = idp.keys[0].as_pem(private=False)

    def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
        head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{head}.{_b64(json.dumps(claims).encode())}."

    def hs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
        head = _b64(json.dumps({"alg": "HS256", "kid": idp.keys[0].kid}).encode())
        body = _b64(json.dumps(claims).encode())
        mac = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(mac)}"

    for forge in (unsigned, hs256):
        idp.id_token_hook = forge
        refused = site.browser().sign_in("corp")
        assert refused.status_code == 403 and "algorithm" in refused.text


def test_a_token_signed_by_an_unpublished_key_is_refused(site: Site) -> None:
    from joserfc import jwt
    from joserfc.jwk import ECKey

    foreign = ECKey.generate_key("P-256", parameters={"kid": site.idps["corp"].keys[0].kid})
    site.idps["corp"].id_token_hook = lambda h, c: jwt.encode(
        {"alg": "ES256", "kid": foreign.kid}, c, foreign)
    assert site.browser().sign_in("corp").status_code == 403


def test_userinfo_adds_claims_but_never_identity_or_proof(site: Site) -> None:
    idp = site.idps["corp"]
    idp.userinfo_hook = lambda info: {**info, "sub": "sub-bob"}
    refused = site.browser().sign_in("corp", user="alice")
    assert refused.status_code == 403 and "another user" in refused.text
    idp.id_token_hook = lambda h, c: (h, {k: v for k, v in c.items() if k != "groups"})
    idp.userinfo_hook = lambda info: {**info, "acr": "urn:demo-idp:phr", "amr": ["hwk"],
                                      "groups": ["staff", "from-userinfo"]}
    browser = site.browser()
    assert browser.sign_in("corp", user="alice", method="pwd").status_code == 303
    user = site.runtime.store.users.by_username("alice")
    assert user is not None and "from-userinfo" in user.groups
    assert forward_auth(browser, "/passkey/x").status_code == 302  # still a password sign-in


def test_key_rotation_is_followed(site: Site) -> None:
    idp = site.idps["corp"]
    idp.rotate_keys(keep_old=False)
    assert site.browser().sign_in("corp").status_code == 303


def _answer_at(browser: Any, started_at: str, callback_of: str, iss: str | None) -> Any:
    """Sign in at `started_at`'s provider, then deliver its answer to `callback_of`'s callback
    with `iss` (the provider's own when "same", none when None)."""
    back = browser.at_provider(browser.start_login(started_at))
    params = query(back.headers["location"])
    issuer = params["iss"] if iss == "same" else iss
    url = f"/oidc/{callback_of}/callback?code={params['code']}&state={params['state']}"
    return browser.get(url + (f"&iss={issuer}" if issuer is not None else ""))


def test_mix_up_an_answer_for_one_provider_at_another_providers_callback(site: Site) -> None:
    browser = site.browser()
    refused = _answer_at(browser, "partner", "corp", "same")
    assert refused.status_code == 403 and "another provider" in refused.text
    # The attacker also rewrites `iss` to the provider of the callback path.
    refused = _answer_at(browser, "partner", "corp", site.idps["corp"].issuer)
    assert refused.status_code == 403 and "address" in refused.text
    # The right callback path, but the response names another issuer (RFC 9207).
    assert _answer_at(browser, "corp", "corp", site.idps["partner"].issuer).status_code == 403
    # And no iss at all, from a provider that promises to send it.
    assert _answer_at(browser, "corp", "corp", None).status_code == 403


@pytest.mark.parametrize("rd", ["https://evil.example/x", "//evil.example", "/\\evil.example",
                                "javascript:alert(1)", "https://app.test@evil.example/"])
def test_the_return_url_cannot_redirect_elsewhere(site: Site, rd: str) -> None:
    from urllib.parse import quote

    done = site.browser().sign_in("corp", rd=quote(rd, safe=""))
    assert done.status_code == 303
    assert done.headers["location"] in ("/account", "http://localhost/account") or \
        done.headers["location"].startswith("/")
    assert "evil" not in done.headers["location"]


def test_a_second_provider_with_the_same_email_never_reaches_the_first_account(site: Site,
                                                                               ) -> None:
    Accounts(site.runtime).add_user("carol", password="local-password-123",
                                    email="carol@example.com")
    local = site.runtime.store.users.by_username("carol")
    for idp in site.idps.values():
        idp.add_user(User("sub-carol-idp", "carol", "carol@example.com", "Carol"))
    # corp makes plain usernames: a new identity named like a local account is refused.
    refused = site.browser().sign_in("corp", user="carol")
    assert refused.status_code == 403 and "not linked" in refused.text
    # partner prefixes its usernames: a separate account, never the local one.
    browser = site.browser()
    assert browser.sign_in("partner", user="carol").status_code == 303
    assert forward_auth(browser, "/x").headers["remote-user"] == "partner:carol"
    partner = site.runtime.store.users.by_username("partner:carol")
    assert local is not None and partner is not None and partner.id != local.id
    # The same sub at another issuer is another identity.
    corp_alice = site.runtime.store.users.by_username("alice")
    other = site.browser()
    assert other.sign_in("partner", user="alice").status_code == 303
    assert corp_alice is not None
    assert forward_auth(other, "/x").headers["remote-user"] == "partner:alice"


# --- allow-lists, deprovisioning, logout ------------------------------------------------------


def test_allow_lists_and_deprovisioning(site: Site) -> None:
    idp = site.idps["strict"]
    idp.add_user(User("sub-dave", "dave", "dave@example.com", "Dave", ["staff"]))
    idp.add_user(User("sub-erin", "erin", "erin@elsewhere.example", "Erin", ["staff"]))
    idp.add_user(User("sub-frank", "frank", "frank@example.com", "F", ["staff"],
                      email_verified=False))
    assert site.browser().sign_in("strict", user="bob").status_code == 403  # not in staff
    assert site.browser().sign_in("strict", user="erin").status_code == 403  # domain
    assert site.browser().sign_in("strict", user="frank").status_code == 403  # unverified
    dave = site.browser()
    assert dave.sign_in("strict", user="dave").status_code == 303
    assert forward_auth(dave, "/x").status_code == 200
    idp.users["sub-dave"].groups = []  # removed from the allowed group at the provider
    assert site.browser().sign_in("strict", user="dave").status_code == 403
    assert forward_auth(dave, "/x").status_code == 302  # and the open session ended
    idp.users["sub-dave"].groups = ["staff"]
    idp.deprovision("sub-dave")
    refused = site.browser().sign_in("strict", user="dave")
    assert refused.status_code == 403 and "access_denied" in refused.text


def test_back_channel_logout_ends_the_session(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", user="alice")
    other = site.browser()
    other.sign_in("corp", user="alice")
    idp = site.idps["corp"]
    sid = idp.sessions_of("sub-alice")[-1]  # the second browser's provider session
    assert idp.backchannel_logout(CLIENT_ID, sid=sid) == 200
    assert forward_auth(other, "/x").status_code == 302
    assert forward_auth(browser, "/x").status_code == 200  # another provider session
    assert idp.backchannel_logout(CLIENT_ID, sub="sub-alice") == 200
    assert forward_auth(browser, "/x").status_code == 302


def test_forged_or_replayed_logout_tokens_are_refused(site: Site) -> None:
    import httpx
    from joserfc import jwt
    from joserfc.jwk import ECKey

    browser = site.browser()
    browser.sign_in("corp", user="alice")
    idp = site.idps["corp"]
    url = f"{site.url}/oidc/corp/backchannel-logout"
    foreign = ECKey.generate_key("P-256", parameters={"kid": idp.keys[0].kid})
    good = idp.logout_token(CLIENT_ID, sub="sub-alice")
    claims = jwt.decode(good, idp.keys[0]).claims
    forged = [
        jwt.encode({"alg": "ES256", "kid": foreign.kid, "typ": "logout+jwt"}, claims, foreign),
        idp.logout_token("another-client", sub="sub-alice"),
        idp.logout_token(CLIENT_ID, sub="sub-alice", events={}),
        idp.logout_token(CLIENT_ID, sub="sub-alice", nonce="n"),
        idp.logout_token(CLIENT_ID, sub="sub-alice", iat=int(time.time()) - 400,
                         exp=int(time.time()) + 60),
        idp.logout_token(CLIENT_ID),  # neither sub nor sid
        idp.logout_token(CLIENT_ID, sub="sub-alice", jti=""),  # nothing to remember it by
        idp.logout_token(CLIENT_ID, sub="sub-alice", jti=7),
        idp.sign({"typ": "JWT"}, {"iss": idp.issuer, "aud": CLIENT_ID, "sub": "sub-alice",
                                  "iat": int(time.time()), "exp": int(time.time()) + 60,
                                  "nonce": "n"}),  # an id_token
        "not-a-jwt",
    ]
    for token in forged:
        answer = httpx.post(url, data={"logout_token": token})
        assert answer.status_code == 400, token
        assert forward_auth(browser, "/x").status_code == 200
    assert httpx.post(url, content=b"{}", headers={"content-type": "application/json"}
                      ).status_code == 400
    assert httpx.post(url, data={"logout_token": good}).status_code == 200
    assert forward_auth(browser, "/x").status_code == 302
    browser.sign_in("corp", user="alice")
    assert httpx.post(url, data={"logout_token": good}).status_code == 400  # replay
    assert forward_auth(browser, "/x").status_code == 200


def test_logout_ends_the_provider_session_too(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", user="alice")
    account = browser.get("/account")
    out = browser.post("/logout", {"csrf_token": browser.csrf(account)})
    assert out.status_code == 303
    target = out.headers["location"]
    assert target.startswith(site.idps["corp"].issuer + "/logout?")
    assert query(target)["id_token_hint"].count(".") == 2
    back = browser.get(target)
    assert back.headers["location"].startswith(f"{site.url}/login")
    assert forward_auth(browser, "/x").status_code == 302
    # The provider session ended too: the next sign-in asks for the login again.
    again = browser.get(browser.start_login("corp").headers["location"])
    assert again.status_code == 200 and 'name="rid"' in again.text


# --- configuration ----------------------------------------------------------------------------


def test_an_unreachable_provider_is_a_clear_error_at_start(tmp_path: Path) -> None:
    from stepguard.demo.idp import DemoIdp

    port = free_port()
    idp = DemoIdp(f"http://127.0.0.1:{port}")
    config = write_config(tmp_path, extra="oidc:\n  providers:\n" + provider_config("corp", idp))
    runtime = build_runtime(load_config(config), clock=time.time)
    try:
        with pytest.raises(ConfigError) as error:
            create_app(runtime)
    finally:
        runtime.close()
    text = str(error.value)
    assert "oidc.providers[0] (corp)" in text
    assert f"http://127.0.0.1:{port}/.well-known/openid-configuration" in text
    assert "ConnectError" in text


def test_the_demo_starts_with_the_bundled_provider(tmp_path: Path) -> None:
    from stepguard.demo.run import free_port as demo_port
    from stepguard.demo.run import idp_config, start_idp
    from stepguard.demo.run import write_config as demo_config

    port = demo_port()
    config = demo_config(tmp_path, port=port, bank_port=demo_port(),
                         idp=idp_config(*start_idp(port)))
    runtime = build_runtime(load_config(config), clock=time.time)
    try:
        app = create_app(runtime)
        providers = app.state.identity_providers
        assert [b["name"] for b in providers.buttons()] == ["demo-idp"]
        assert providers.clients["demo-idp"].metadata.end_session_endpoint
    finally:
        runtime.close()


def test_users_list_shows_the_source(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    from stepguard.service.idp import sources

    site.browser().sign_in("corp", user="alice")
    Accounts(site.runtime).add_user("local-only", password="a-local-password-1")
    users = {u.username: u.id for u in site.runtime.store.users.list(limit=1000)}
    found = sources(site.runtime.store, list(users.values()))
    assert found[users["alice"]] == "corp"
    assert found[users["local-only"]] == "local"


def test_the_portal_doors_refuse_bad_requests_with_clear_answers(site: Site) -> None:
    import httpx

    anonymous = site.browser()
    page = anonymous.get("/login")
    token = anonymous.csrf(page)
    assert anonymous.post("/oidc/corp/start", {"csrf_token": "x" * 64}).status_code == 403
    assert anonymous.post("/oidc/nobody/start", {"csrf_token": token}).status_code == 404
    assert anonymous.post("/step-up/abc/idp", {"csrf_token": token}).status_code == 303
    ambiguous = anonymous.get("/oidc/corp/callback?state=a&state=b&code=c")
    assert ambiguous.status_code == 400
    browser = site.browser()
    browser.sign_in("corp", user="alice")
    account = browser.get("/account")
    assert browser.post("/step-up/gone/idp", {"csrf_token": browser.csrf(account)}
                        ).status_code == 410
    assert browser.post("/step-up/gone/idp", {"csrf_token": "y" * 64}).status_code == 403
    local = _challenge(forward_auth(browser, "/local-strong/x"))
    refused = browser.post(f"{local}/idp", {"csrf_token": browser.csrf(browser.get(local))})
    assert refused.status_code == 403 and "cannot be confirmed" in refused.text
    url = f"{site.url}/oidc/corp/backchannel-logout"
    assert httpx.post(url, content=b"logout_token=%ff%fe",
                      headers={"content-type": "application/x-www-form-urlencoded"}
                      ).status_code == 400
    assert httpx.post(url, content=b"x" * 40_000,
                      headers={"content-type": "application/x-www-form-urlencoded"}
                      ).status_code == 400
    assert httpx.post(url, data={"logout_token": ["a", "b"]}).status_code == 400


def test_a_provider_down_during_sign_in_fails_closed(site: Site) -> None:
    from dataclasses import replace

    browser = site.browser()
    back = browser.at_provider(browser.start_login("corp"))
    client = site.providers.clients["corp"]
    real = client.metadata
    client.metadata = replace(real, token_endpoint="http://127.0.0.1:9/token")
    try:
        answer = browser.get(back.headers["location"])
    finally:
        client.metadata = real
    assert answer.status_code == 503 and "could not be reached" in answer.text


def test_a_disabled_user_cannot_sign_in_at_the_provider(site: Site) -> None:
    idp = site.idps["partner"]
    idp.add_user(User("sub-gina", "gina", "gina@example.com", "Gina"))
    assert site.browser().sign_in("partner", user="gina").status_code == 303
    user = site.runtime.store.users.by_username("partner:gina")
    assert user is not None
    Accounts(site.runtime).disable_user(user.id)
    refused = site.browser().sign_in("partner", user="gina")
    assert refused.status_code == 403 and "disabled" in refused.text


def test_passwords_can_be_turned_off(tmp_path: Path) -> None:
    with serve_site(tmp_path, {"corp": {}}, oidc_extra="  passwords: false\n") as only_idp:
        browser = only_idp.browser()
        page = browser.get("/login")
        assert 'name="password"' not in page.text and 'data-provider="corp"' in page.text
        refused = browser.post("/login", {"csrf_token": browser.csrf(page), "username": "x",
                                          "password": "y"})
        assert refused.status_code == 403


def test_back_channel_logout_is_refused_where_it_is_off(site: Site) -> None:
    import httpx

    browser = site.browser()
    assert browser.sign_in("partner", user="alice").status_code == 303
    idp = site.idps["partner"]
    answer = httpx.post(f"{site.url}/oidc/partner/backchannel-logout",
                        data={"logout_token": idp.logout_token(CLIENT_ID, sub="sub-alice")})
    assert answer.status_code == 400
    assert forward_auth(browser, "/x").status_code == 200  # nothing was ended


def test_an_answer_without_a_code_is_refused(site: Site) -> None:
    browser = site.browser()
    back = browser.at_provider(browser.start_login("corp"))
    params = query(back.headers["location"])
    refused = browser.get(f"/oidc/corp/callback?state={params['state']}&iss={params['iss']}")
    assert refused.status_code == 403 and "no code" in refused.text
    assert "stepguard_session" not in refused.headers.get("set-cookie", "")


def test_a_step_up_answer_without_auth_time_is_refused(site: Site) -> None:
    """Freshness cannot be judged without `auth_time` (OWASP V6.8.4: assume the weakest)."""
    browser = site.browser()
    browser.sign_in("corp", method="pwd")
    cid_url = _challenge(forward_auth(browser, "/idp-strong/x"))
    site.idps["corp"].id_token_hook = lambda h, c: (
        h, {k: v for k, v in c.items() if k != "auth_time"})
    refused = browser.step_up_at_provider(cid_url, method="mfa")
    assert refused.status_code == 403  # refused as a token without a claim max_age asked for
    assert forward_auth(browser, "/idp-strong/x").status_code == 302


def test_a_step_up_at_the_provider_with_another_method_than_the_rule_names_is_refused(
        site: Site) -> None:
    browser = site.browser()
    browser.sign_in("corp", method="pwd")
    cid_url = _challenge(forward_auth(browser, "/passkey/x"))  # methods: [webauthn]
    refused = browser.step_up_at_provider(cid_url, method="mfa")  # a code, not a passkey
    assert refused.status_code == 403 and "another method" in refused.text
    assert forward_auth(browser, "/passkey/x").status_code == 302



def test_a_step_up_answer_for_an_earlier_session_of_the_same_browser_is_refused(
        site: Site) -> None:
    """Signed in again between asking the provider and its answer: the confirmation was for
    the old session and does not step up the new one."""
    browser = site.browser()
    browser.sign_in("corp", method="pwd")
    cid_url = _challenge(forward_auth(browser, "/idp-strong/x"))
    page = browser.get(cid_url)
    start = browser.post(f"{cid_url}/idp", {"csrf_token": browser.csrf(page)})
    assert browser.sign_in("corp", method="pwd").status_code == 303  # a new session
    back = browser.at_provider(start, method="mfa")
    refused = browser.get(back.headers["location"])
    assert refused.status_code == 403, refused.text[:300]
    assert forward_auth(browser, "/idp-strong/x").status_code == 302
