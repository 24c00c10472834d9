"""Going passkey-only on the account page: the password is removed only after a fresh second
proof and only when a passkey exists to sign in with (else the user would be locked out)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from starlette.testclient import TestClient

from stepguard.web.app import create_app
from tests.contract import build
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user

BASE = "http://localhost:9091"
ADMIN = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http",
         "X-Forwarded-Host": "localhost:9091", "X-Forwarded-Uri": "/admin/users",
         "Accept": "application/json"}


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:300]
    return match.group(1)


def sign_in(client: TestClient, alice: Seeded) -> bool:
    """Whether the password signs in (a refusal is a 303 back to /login, post/redirect/get)."""
    page = client.get("/login")
    answer = client.post("/login", data={"username": "alice", "csrf_token": csrf(page.text),
                                         "password": alice.password})
    return answer.status_code == 303 and not answer.headers["location"].startswith("/login")


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[TestClient, Seeded, Clock]]:
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock)
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=("127.0.0.1", 1000),
                    follow_redirects=False) as client:
        assert sign_in(client, alice)
        yield client, alice, clock
    runtime.close()


def _step_up(client: TestClient, alice: Seeded, clock: Clock) -> None:
    header = client.get("/api/authz/forward-auth", headers=ADMIN).headers["www-authenticate"]
    cid = re.search(r'/step-up/([A-Za-z0-9_-]+)"', header).group(1)  # type: ignore[union-attr]
    page = client.get(f"/step-up/{cid}")
    passed = client.post(f"/step-up/{cid}/totp",
                         data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)})
    assert passed.status_code == 303, passed.text[:300]


def _remove(client: TestClient) -> tuple[int, str]:
    page = client.get("/account")
    answer = client.post("/account/password/remove", data={"csrf_token": csrf(page.text)})
    return answer.status_code, unquote(answer.headers.get("location", "")) or answer.text


def test_the_password_stays_without_a_fresh_second_proof(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = env
    status, said = _remove(client)
    assert status == 403 and "Confirm it" in said
    client.cookies.clear()
    assert sign_in(client, alice)


def test_the_password_stays_without_a_passkey_to_sign_in_with(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = env
    _step_up(client, alice, clock)
    status, said = _remove(client)
    assert status == 303 and "Password kept: Add a passkey first" in said
    client.cookies.clear()
    assert sign_in(client, alice)


def test_with_a_passkey_and_a_fresh_proof_the_password_stops_working(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = env
    runtime = client.app.state.runtime
    runtime.store.factors.add(build.factor(
        alice.user.id, "webauthn", created=clock.now - 60, credential_id=secrets.token_bytes(16),
        public_key=b"key", sign_count=0, data={"uv": True}))
    _step_up(client, alice, clock)
    status, said = _remove(client)
    assert status == 303 and "your password no longer works" in said
    client.cookies.clear()
    assert not sign_in(client, alice)  # the old password signs in no more


# --- the agents page: the same account-page rules for agent tokens -------------------------------


def test_the_agents_page_refuses_without_a_session_or_a_form_token(env) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = env
    assert client.post("/account/agents", data={"name": "bot"}).status_code == 403
    assert client.post("/account/agents/revoke", data={"token_id": "x"}).status_code == 403
    client.cookies.clear()
    for answer in (client.get("/account/agents"),
                   client.post("/account/agents", data={"name": "bot"}),
                   client.post("/account/agents/revoke", data={"token_id": "x"})):
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_an_agent_token_needs_a_usable_name_and_only_live_ones_are_revoked(env) -> None:  # type: ignore[no-untyped-def]
    from stepguard.service.agent_tokens import AgentTokens

    client, alice, clock = env
    _step_up(client, alice, clock)
    token = csrf(client.get("/account/agents").text)
    bad = client.post("/account/agents", data={"name": "<script>", "csrf_token": token})
    assert bad.status_code == 400 and "Not created" in bad.text
    unknown = client.post("/account/agents/revoke", data={"token_id": "nope", "csrf_token": token})
    assert unknown.status_code == 404 and "No such agent token" in unknown.text
    made = client.post("/account/agents", data={"name": "laptop bot", "csrf_token": token})
    assert made.status_code == 200
    record = AgentTokens(client.app.state.runtime).for_user(alice.user.id)[0]
    revoke = {"token_id": record.id, "csrf_token": token}
    assert client.post("/account/agents/revoke", data=revoke).status_code == 303
    again = client.post("/account/agents/revoke", data=revoke)
    assert again.status_code == 404  # revoked once; a second time finds no live token


# --- the account page's other doors -----------------------------------------------------------


def test_every_account_door_sends_a_signed_out_browser_to_sign_in(env) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = env
    client.cookies.clear()
    for method, path in (("GET", "/account"), ("GET", "/account/totp"),
                         ("GET", "/account/passkey"), ("GET", "/account/push-device"),
                         ("GET", "/account/push/some-push"), ("POST", "/account/recovery"),
                         ("POST", "/account/sessions/revoke"), ("POST", "/account/totp")):
        answer = client.request(method, path, data={} if method == "POST" else None)
        assert answer.status_code in (302, 303), (method, path)
        assert answer.headers["location"].startswith("/login"), (method, path)


def test_regenerating_recovery_codes_needs_the_form_token_and_a_pending_push_must_exist(
        env) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = env
    assert client.post("/account/recovery", data={}).status_code == 403
    missing = client.get("/account/push/no-such-push")
    assert missing.status_code == 404 and "no longer pending" in missing.text


def test_without_a_second_factor_a_stale_sign_in_is_renewed_by_signing_in_again(
        tmp_path: Path) -> None:
    """No factor to step up with: a factor change asks for a fresh password sign-in."""
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock)
    bob = seed_user(runtime, "bob", with_totp=False)
    with TestClient(create_app(runtime), base_url=BASE, client=("127.0.0.1", 1000),
                    follow_redirects=False) as client:
        page = client.get("/login")
        assert client.post("/login", data={"username": "bob", "password": bob.password,
                                           "csrf_token": csrf(page.text)}).status_code == 303
        assert client.get("/account/totp").status_code == 200  # fresh: set-up may begin
        clock.advance(11 * 60)
        stale = client.get("/account/totp")
        assert stale.status_code == 303
        assert stale.headers["location"] == "/login?rd=%2Faccount%2Ftotp"
    runtime.close()
