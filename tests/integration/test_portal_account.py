"""The account and admin pages over HTTP: factor changes behind a fresh proof, session and user
management (SECURITY.md cases 10 and 12; ASVS V7.5.1)."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

import pyotp
from starlette.testclient import TestClient

from stepguard.service.runtime import hash_token
from tests.integration import test_enforcement
from tests.integration.test_enforcement import Gw, challenge_page, submit
from tests.integration.test_gateway import BASE, csrf, forward, sign_in
from tests.support.gateway import seed_user, shown
from tests.support.soft_authenticator import SoftAuthenticator

gw = test_enforcement.gw  # the same fixture: a runtime on SQLite, alice, a settable clock


def prove(client: TestClient, gw: Gw, page_url: str) -> str:
    """Answer a step-up page with alice's TOTP; where it sends the browser next."""
    gw.clock.advance(30)
    passed = submit(client, page_url, "totp", gw.alice.code(gw.clock.now))
    assert passed.status_code == 303, passed.text
    return passed.headers["location"]


def note(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 303, response.text
    return unquote(response.headers["location"].partition("?m=")[2])


def test_adding_an_authenticator_needs_a_fresh_second_factor_then_a_right_code(gw: Gw) -> None:
    with gw.client() as client, gw.client() as elsewhere:
        sign_in(client, gw.alice)
        sign_in(elsewhere, gw.alice)
        first = client.get("/account/totp")
        assert first.status_code == 303 and first.headers["location"].startswith("/step-up/")
        assert prove(client, gw, first.headers["location"]) == "/account/totp"
        page = client.get("/account/totp")
        assert page.status_code == 200
        secret = re.search(r"secret=([A-Z2-7]+)", unquote(page.text))
        action = re.search(r'action="(/account/totp\?f=[^"]+)"', page.text)
        assert secret and action
        wrong = client.post(action.group(1).replace("&amp;", "&"),
                            data={"code": "000000", "csrf_token": csrf(page.text)})
        assert note(wrong).startswith("Authenticator not added")
        right = client.post(action.group(1).replace("&amp;", "&"), data={
            "code": pyotp.TOTP(secret.group(1)).at(gw.clock.now), "csrf_token": csrf(page.text)})
        assert note(right) == "Authenticator app added."
        assert len(gw.runtime.store.factors.for_user(gw.alice.user.id, kind="totp")) == 2
        assert forward(elsewhere, "/dashboard").status_code == 302  # other sessions ended


def test_recovery_codes_and_factor_removal_need_a_fresh_proof(gw: Gw) -> None:
    totp = gw.runtime.store.factors.for_user(gw.alice.user.id, kind="totp")[0]
    with gw.client() as client:
        sign_in(client, gw.alice)
        account = client.get("/account")
        refused = client.post("/account/recovery", data={"csrf_token": csrf(account.text)})
        assert refused.status_code == 403
        removal = client.post("/account/factors/remove",
                              data={"factor_id": totp.id, "csrf_token": csrf(account.text)})
        assert removal.status_code == 403
        assert gw.runtime.store.factors.for_user(gw.alice.user.id, kind="totp")
        prove(client, gw, challenge_page(client))  # a fresh aal2 proof
        account = client.get("/account")
        codes_page = client.post("/account/recovery", data={"csrf_token": csrf(account.text)})
        assert codes_page.status_code == 200
        codes = re.findall(r"\b[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{5}\b", codes_page.text)
        assert len(set(codes)) == 10
        stored = gw.runtime.store.factors.recovery_codes(gw.alice.user.id)
        assert len(stored) == 10 and all(c not in str(stored) for c in codes)  # hashed
        missing = client.post("/account/factors/remove",
                              data={"factor_id": "nope", "csrf_token": csrf(account.text)})
        assert note(missing) == "Not found."
        removed = client.post("/account/factors/remove",
                              data={"factor_id": totp.id, "csrf_token": csrf(account.text)})
        assert note(removed) == "Removed."
        assert not gw.runtime.store.factors.for_user(gw.alice.user.id, kind="totp")


def test_a_user_ends_another_of_their_sessions_on_its_next_request(gw: Gw) -> None:
    bob = seed_user(gw.runtime, "bob", groups=())
    with gw.client() as client, gw.client() as elsewhere, gw.client() as bobs:
        sign_in(client, gw.alice)
        sign_in(elsewhere, gw.alice)
        sign_in(bobs, bob)
        sessions = gw.runtime.store.sessions
        other = sessions.by_token_hash(hash_token(elsewhere.cookies["stepguard_session"]))
        assert other is not None
        bob_session = sessions.list_for_user(bob.user.id)[0]
        account = client.get("/account")
        assert account.status_code == 200
        foreign = client.post("/account/sessions/revoke", data={
            "session_id": bob_session.id, "csrf_token": csrf(account.text)})
        assert note(foreign) == "No such session."
        assert forward(bobs, "/dashboard").status_code == 200
        ended = client.post("/account/sessions/revoke", data={
            "session_id": other.id, "csrf_token": csrf(account.text)})
        assert note(ended) == "Session ended."
        assert forward(elsewhere, "/dashboard").status_code == 302
        assert forward(client, "/dashboard").status_code == 200


def test_the_admin_console_needs_the_admins_group_and_a_step_up(gw: Gw) -> None:
    bob = seed_user(gw.runtime, "bob", groups=())
    with gw.client() as admin, gw.client() as bobs:
        sign_in(bobs, bob)
        assert bobs.get("/admin").status_code == 403
        sign_in(admin, gw.alice)
        first = admin.get("/admin")
        assert first.status_code == 303 and first.headers["location"].startswith("/step-up/")
        assert prove(admin, gw, first.headers["location"]) == "/admin"
        console = admin.get("/admin", params={"user": "bob", "rule": "", "outcome": ""})
        assert console.status_code == 200 and "bob" in console.text
        bob_session = gw.runtime.store.sessions.list_for_user(bob.user.id)[0]
        asked = admin.post("/admin/sessions/revoke", data={
            "session_id": bob_session.id, "csrf_token": csrf(console.text)})
        assert asked.status_code == 200 and 'name="confirm"' in asked.text  # confirm first
        assert forward(bobs, "/dashboard").status_code == 200  # nothing happened yet
        revoked = admin.post("/admin/sessions/revoke", data={
            "session_id": bob_session.id, "csrf_token": csrf(asked.text), "confirm": "yes"})
        assert revoked.status_code == 303
        assert forward(bobs, "/dashboard").headers["location"].startswith(f"{BASE}/login")
        disabled = admin.post("/admin/users/disable", data={
            "user_id": bob.user.id, "csrf_token": csrf(console.text), "confirm": "yes"})
        assert disabled.status_code == 303
        page = bobs.get("/login")
        refused = bobs.post("/login", data={"username": "bob", "password": bob.password,
                                            "csrf_token": csrf(page.text)})
        assert shown(bobs, refused).status_code == 401


def meta_csrf(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match
    return match.group(1)


def test_a_passkey_is_enrolled_and_used_for_a_step_up_through_the_portal(gw: Gw) -> None:
    authenticator = SoftAuthenticator(origin=BASE)
    with gw.client() as client:
        sign_in(client, gw.alice)
        assert client.post("/account/passkey/begin").status_code == 403  # no CSRF token
        first = client.get("/account/passkey")
        assert first.status_code == 303  # a factor change needs a fresh second factor
        assert prove(client, gw, first.headers["location"]) == "/account/passkey"
        page = client.get("/account/passkey")
        headers = {"X-CSRF-Token": meta_csrf(page.text), "Origin": BASE}
        options = client.post("/account/passkey/begin", headers=headers)
        assert options.status_code == 200, options.text
        created = client.post("/account/passkey/finish", headers=headers, json={
            "credential": json.loads(authenticator.create(options.text)), "label": "soft key"})
        assert created.json() == {"redirect": "/account?m=Passkey%20added."}
        gw.clock.advance(60)

        export = forward(client, "/customers/export")  # aal3 with a passkey
        page_url = export.headers["location"].removeprefix(BASE)
        page = client.get(page_url)
        assert 'id="method-webauthn"' in page.text or "passkey" in page.text.lower()
        headers = {"X-CSRF-Token": meta_csrf(page.text), "Origin": BASE}
        ceremony = client.post(f"{page_url}/webauthn/begin", headers=headers)
        assertion = authenticator.get(ceremony.text)
        done = client.post(f"{page_url}/webauthn/finish", headers=headers, content=assertion)
        assert done.json() == {"redirect": "https://app.test/customers/export"}
        assert forward(client, "/customers/export").status_code == 200
        headers["X-CSRF-Token"] = meta_csrf(client.get("/account").text)  # the token rotated
        replayed = client.post(f"{page_url}/webauthn/finish", headers=headers, content=assertion)
        assert replayed.status_code == 410
    with gw.client() as anonymous:
        assert anonymous.post(f"{page_url}/webauthn/begin").status_code == 401
