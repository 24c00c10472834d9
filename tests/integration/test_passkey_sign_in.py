"""Passkey-first sign-in through the portal (issue 15), with a software authenticator.

A discoverable passkey with user verification signs in without a username or a password. The
ceremony is single use, belongs to the browser that began it (its pre-session cookie), and the
answer must come from a registered passkey of an enabled user, with UV, with that user's handle.
Every refusal is a 4xx with a message, never a 500, and no session cookie.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.testclient import TestClient

from stepguard.service.accounts import Accounts
from tests.integration import test_enforcement
from tests.integration.test_enforcement import Gw
from tests.integration.test_gateway import BASE, PEER, forward, sign_in
from tests.integration.test_portal_account import meta_csrf, prove
from tests.support.soft_authenticator import SoftAuthenticator

gw = test_enforcement.gw  # the same fixture: a runtime on SQLite, alice, a settable clock


def enrol(client: TestClient, gw: Gw, authenticator: SoftAuthenticator) -> None:
    """alice adds a passkey (behind a fresh TOTP proof) in this browser."""
    sign_in(client, gw.alice)
    first = client.get("/account/passkey")
    assert prove(client, gw, first.headers["location"]) == "/account/passkey"
    page = client.get("/account/passkey")
    headers = {"X-CSRF-Token": meta_csrf(page.text), "Origin": BASE}
    options = client.post("/account/passkey/begin", headers=headers)
    assert json.loads(options.text)["authenticatorSelection"]["residentKey"] == "required"
    created = client.post("/account/passkey/finish", headers=headers, json={
        "credential": json.loads(authenticator.create(options.text)), "label": "key"})
    assert created.status_code == 200, created.text
    gw.clock.advance(60)


def browser(client: TestClient) -> TestClient:
    """Another browser on the same running application (its own cookies)."""
    return TestClient(client.app, base_url=BASE, client=PEER, follow_redirects=False)


def begin(client: TestClient) -> tuple[dict[str, str], dict[str, Any]]:
    page = client.get("/login?rd=%2Fdashboard")
    assert 'data-passkey-sign-in' in page.text and 'autocomplete="username webauthn"' in page.text
    headers = {"X-CSRF-Token": meta_csrf(page.text), "Origin": BASE}
    answer = client.post("/login/passkey/begin", headers=headers)
    assert answer.status_code == 200, answer.text
    return headers, answer.json()


def finish(client: TestClient, headers: dict[str, str], ceremony: str, credential: str):  # type: ignore[no-untyped-def]
    return client.post("/login/passkey/finish?rd=%2Fdashboard", headers=headers,
                       json={"ceremony": ceremony, "credential": json.loads(credential)})


def test_a_passkey_signs_in_without_username_or_password(gw: Gw) -> None:
    authenticator = SoftAuthenticator(origin=BASE)
    with gw.client() as phone:
        enrol(phone, gw, authenticator)
        client = browser(phone)
        headers, started = begin(client)
        options = started["publicKey"]
        assert options["allowCredentials"] == [] and options["userVerification"] == "required"
        done = finish(client, headers, started["ceremony"], authenticator.get(json.dumps(options)))
        assert done.status_code == 200, done.text
        assert done.json() == {"redirect": "/dashboard"}
        allowed = forward(client, "/dashboard")
        assert allowed.status_code == 200
        assert allowed.headers["remote-user"] == "alice"
        assert allowed.headers["stepguard-amr"] == "hwk,user"  # one multi-factor proof
        # The same answer again (the pre-session ended with the sign-in, and the ceremony
        # was used): refused, no new session.
        again = finish(client, headers, started["ceremony"],
                       authenticator.get(json.dumps(options)))
        assert again.status_code in (400, 403) and "set-cookie" not in again.headers


def test_refusals(gw: Gw) -> None:
    authenticator = SoftAuthenticator(origin=BASE)
    with gw.client() as phone:
        enrol(phone, gw, authenticator)
        client, other = browser(phone), browser(phone)
        headers, started = begin(client)
        options = json.dumps(started["publicKey"])
        # Another browser cannot finish this browser's ceremony.
        other_headers, _ = begin(other)
        stolen = finish(other, other_headers, started["ceremony"], authenticator.get(options))
        assert stolen.status_code == 400 and "set-cookie" not in stolen.headers
        forgeries = (
            lambda o: authenticator.get(o, uv=False),  # no user verification
            lambda o: authenticator.get(o, user_handle=b"someone else"),
            lambda o: authenticator.get(o, origin="https://evil.example"),
            lambda o: authenticator.get(o, rp_id="evil.example"),
            lambda o: SoftAuthenticator(origin=BASE).create(json.dumps({  # not an assertion
                "rp": {"id": "localhost"}, "user": {"id": "YWJj"},
                "challenge": json.loads(o)["challenge"]})),
        )
        for forge in forgeries:
            gw.clock.advance(120)  # past the back-off the previous refusal earned
            headers, started = begin(client)
            refused = finish(client, headers, started["ceremony"],
                             forge(json.dumps(started["publicKey"])))
            assert refused.status_code == 400, refused.text
            assert "stepguard_session" not in refused.headers.get("set-cookie", "")
        # An unknown passkey.
        stranger = SoftAuthenticator(origin=BASE)
        stranger.create(json.dumps({"rp": {"id": "localhost"}, "user": {"id": "YWJj"},
                                    "challenge": "AAAA"}))
        gw.clock.advance(120)
        headers, started = begin(client)
        unknown = finish(client, headers, started["ceremony"],
                         stranger.get(json.dumps(started["publicKey"])))
        assert unknown.status_code == 400 and "does not sign in" in unknown.json()["error"]
        # No CSRF token, garbage bodies: 403 / 400, never a 500.
        assert client.post("/login/passkey/begin").status_code == 403
        for body in (b"not json", b"[]", b'{"credential": "x"}', b'{"credential": {}}'):
            answer = client.post("/login/passkey/finish", headers=headers, content=body)
            assert answer.status_code == 400, (body, answer.text)


def test_a_disabled_user_cannot_sign_in_with_a_passkey(gw: Gw) -> None:
    authenticator = SoftAuthenticator(origin=BASE)
    with gw.client() as phone:
        enrol(phone, gw, authenticator)
        Accounts(gw.runtime).disable_user(gw.alice.user.id)
        client = browser(phone)
        headers, started = begin(client)
        refused = finish(client, headers, started["ceremony"],
                         authenticator.get(json.dumps(started["publicKey"])))
        assert refused.status_code == 400


def test_a_user_without_a_password_cannot_sign_in_with_one(gw: Gw) -> None:
    user = Accounts(gw.runtime).add_user("nopass", password=None)
    assert user.password_hash == ""
    with gw.client() as client:
        page = client.get("/login")
        for guess in ("", "x", "password"):
            answer = client.post("/login", data={"username": "nopass", "password": guess,
                                                 "csrf_token": meta_csrf(page.text)})
            assert answer.status_code == 303 and "/login" in answer.headers["location"]


def test_a_garbage_passkey_enrolment_answer_is_a_400_not_a_500(gw: Gw) -> None:
    with gw.client() as client:
        sign_in(client, gw.alice)
        first = client.get("/account/passkey")
        assert prove(client, gw, first.headers["location"]) == "/account/passkey"
        page = client.get("/account/passkey")
        headers = {"X-CSRF-Token": meta_csrf(page.text), "Origin": BASE}
        assert client.post("/account/passkey/begin", headers=headers).status_code == 200
        for body in (b"not json", b"[1]", b'"text"', b'{"credential": 5}', b"\xff"):
            answer = client.post("/account/passkey/finish", headers=headers, content=body)
            assert answer.status_code == 400, (body, answer.status_code)
