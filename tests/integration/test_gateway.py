"""The gateway over HTTP (in process): forward-auth for Caddy and nginx, the portal, step-up.

Covers SECURITY.md cases 1, 4, 11, 12 (one instance) and 15 at the HTTP level; the same flows
through real nginx and Caddy are in tests/e2e.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user, shown

BASE = "http://localhost:9091"
PEER = ("127.0.0.1", 50000)


@pytest.fixture()
def clock() -> Clock:
    return Clock()


METRICS_TOKEN = "scraper-token-for-tests"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture()
def gateway(tmp_path: Path, clock: Clock) -> Iterator[tuple[TestClient, Seeded]]:
    runtime = make_runtime(tmp_path, clock=clock, extra=f'metrics: {{token: "{METRICS_TOKEN}"}}\n')
    alice = seed_user(runtime)
    with TestClient(
        create_app(runtime), base_url=BASE, client=PEER, follow_redirects=False
    ) as client:
        yield client, alice
    runtime.close()


def caddy_headers(
    path: str,
    method: str = "GET",
    *,
    html: bool = True,
    ip: str = "203.0.113.7",
    host: str = "app.test",
) -> dict[str, str]:
    return {
        "X-Forwarded-Method": method,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": host,
        "X-Forwarded-Uri": path,
        "X-Forwarded-For": ip,
        "Accept": "text/html" if html else "application/json",
    }


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def sign_in(client: TestClient, user: Seeded) -> str:
    page = client.get("/login")
    response = client.post(
        "/login",
        data={
            "username": user.user.username,
            "password": user.password,
            "csrf_token": csrf(page.text),
        },
    )
    assert response.status_code == 303, response.text
    return client.cookies["stepguard_session"]


def forward(client: TestClient, path: str, method: str = "GET", **kw: object):  # type: ignore[no-untyped-def]
    return client.get("/api/authz/forward-auth", headers=caddy_headers(path, method, **kw))  # type: ignore[arg-type]


def test_anonymous_browser_is_sent_to_sign_in_and_api_client_gets_rfc9470(gateway) -> None:  # type: ignore[no-untyped-def]
    client, _ = gateway
    browser = forward(client, "/dashboard")
    assert browser.status_code == 302
    assert browser.headers["location"].startswith(f"{BASE}/login?rd=https%3A%2F%2Fapp.test")
    api = forward(client, "/dashboard", html=False)
    assert api.status_code == 401
    assert api.headers["www-authenticate"].startswith(
        'Bearer error="insufficient_user_authentication"'
    )
    assert 'acr_values="urn:stepguard:aal1"' in api.headers["www-authenticate"]
    assert api.json()["challenge_url"].startswith(f"{BASE}/login")


def test_signed_in_request_is_allowed_with_every_identity_header(gateway) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    sign_in(client, alice)
    allowed = forward(client, "/dashboard")
    assert allowed.status_code == 200 and allowed.content == b""
    assert allowed.headers["remote-user"] == "alice"
    assert allowed.headers["remote-groups"] == "admins"
    assert allowed.headers["remote-email"] == "alice@example.com"
    assert allowed.headers["stepguard-acr"] == "urn:stepguard:aal1"
    assert allowed.headers["stepguard-amr"] == "pwd"


def test_step_up_with_totp_then_allowed_then_stale_again(gateway, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    first_token = sign_in(client, alice)
    stepped = forward(client, "/admin/users/bob/roles", "POST")
    assert stepped.status_code == 303
    page_url = stepped.headers["location"].removeprefix(BASE)
    page = client.get(page_url)
    assert page.status_code == 200 and "Changing someone" in page.text
    done = client.post(
        page_url + "/totp", data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)}
    )
    assert done.status_code == 303
    assert done.headers["location"] == "https://app.test/admin/users/bob/roles"
    assert client.cookies["stepguard_session"] != first_token  # rotated (case 11)
    assert forward(client, "/admin/users/bob/roles", "POST").status_code == 200
    clock.advance(6 * 60)  # past max_age 5m: the admin grant has expired
    assert forward(client, "/admin/users/bob/roles", "POST").status_code == 303


def test_the_pre_rotation_token_is_useless(gateway, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    old = sign_in(client, alice)
    page_url = forward(client, "/admin/audit").headers["location"].removeprefix(BASE)
    page = client.get(page_url)
    client.post(
        page_url + "/totp", data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)}
    )
    client.cookies.clear()
    client.cookies.set("stepguard_session", old)
    assert forward(client, "/dashboard").status_code == 302  # back to sign-in


def test_the_same_totp_code_is_refused_the_second_time(gateway, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    other = TestClient(client.app, base_url=BASE, client=PEER, follow_redirects=False)
    code = alice.code(clock.now)
    for browser in (client, other):
        sign_in(browser, alice)
    first = forward(client, "/admin/audit").headers["location"].removeprefix(BASE)
    second = forward(other, "/admin/audit").headers["location"].removeprefix(BASE)
    page = client.get(first)
    assert (
        client.post(first + "/totp", data={"code": code, "csrf_token": csrf(page.text)}).status_code
        == 303
    )
    page = other.get(second)
    replay = other.post(second + "/totp", data={"code": code, "csrf_token": csrf(page.text)})
    assert replay.status_code == 401 and "already used" in replay.text


def test_nginx_gets_401_with_location_instead_of_a_redirect(gateway) -> None:  # type: ignore[no-untyped-def]
    client, _ = gateway
    response = client.get(
        "/api/authz/auth-request",
        headers={
            "X-Original-URL": "https://app.test/dashboard",
            "X-Original-Method": "GET",
            "Accept": "text/html",
        },
    )
    assert response.status_code == 401
    assert response.headers["location"].startswith(f"{BASE}/login?rd=")


def test_forwarded_headers_from_an_untrusted_peer_change_nothing(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    with TestClient(create_app(runtime), base_url=BASE, client=("198.51.100.9", 4000)) as client:
        response = client.get("/api/authz/forward-auth", headers=caddy_headers("/dashboard"))
        assert response.status_code == 403
        portal = client.get("/login", headers={"X-Forwarded-For": "10.20.0.1"})
        assert portal.status_code == 200
    runtime.close()


@pytest.mark.parametrize(
    "path",
    [
        "/admin%2fusers/bob/roles",
        "/admin/users/bob/roles%00",
        "/admin\\users",
        "/%2e%2e/admin",
        "/admin;x=1/users",
    ],
)
def test_ambiguous_paths_are_refused(gateway, path: str) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    sign_in(client, alice)
    assert forward(client, path, "POST").status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        "/admin//users/bob/roles",
        "/ADMIN/users/bob/roles",
        "/x/../admin/users/bob/roles",
        "/admin/./users/bob/roles",
    ],
)
def test_path_tricks_get_the_canonical_decision(gateway, path: str) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    sign_in(client, alice)
    assert forward(client, path, "POST").status_code == 303  # step-up, never the default allow


@pytest.mark.parametrize(
    "rd",
    [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "javascript:alert(1)",
        "https://app.test@evil.example/",
        "%2F%2Fevil.example",
        "https://app.test.evil.example/",
    ],
)
def test_open_redirects_are_refused(gateway, rd: str) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    page = client.get("/login", params={"rd": rd})
    response = client.post(
        "/login",
        params={"rd": rd},
        data={"username": "alice", "password": alice.password, "csrf_token": csrf(page.text)},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/account"


def test_allowed_return_url_is_kept(gateway) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    page = client.get("/login", params={"rd": "https://app.test/x"})
    response = client.post(
        "/login",
        params={"rd": "https://app.test/x"},
        data={"username": "alice", "password": alice.password, "csrf_token": csrf(page.text)},
    )
    assert response.headers["location"] == "https://app.test/x"


@pytest.mark.parametrize(
    "headers, with_token",
    [
        ({}, False),
        ({"Origin": "https://evil.example"}, True),
        ({"Origin": "null"}, True),
    ],
)
def test_csrf_is_refused(gateway, headers: dict[str, str], with_token: bool) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    page = client.get("/login")
    data = {"username": "alice", "password": alice.password}
    if with_token:
        data["csrf_token"] = csrf(page.text)
    response = client.post("/login", data=data, headers=headers)
    assert response.status_code == 403
    assert "stepguard_session" not in client.cookies


def test_logout_revokes_on_the_next_request(gateway) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    token = sign_in(client, alice)
    account = client.get("/account")
    assert client.post("/logout", data={"csrf_token": csrf(account.text)}).status_code == 303
    client.cookies.set("stepguard_session", token)
    assert forward(client, "/dashboard").status_code == 302


def test_wrong_passwords_are_throttled(gateway) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    statuses = []
    for _ in range(3):
        page = client.get("/login")
        answer = client.post(
            "/login", data={"username": "alice", "password": "nope", "csrf_token": csrf(page.text)}
        )
        statuses.append(shown(client, answer).status_code)
    assert statuses[0] == 401 and 429 in statuses
    page = client.get("/login")
    blocked = shown(client, client.post(
        "/login",
        data={"username": "alice", "password": alice.password, "csrf_token": csrf(page.text)},
    ))
    assert blocked.status_code == 429 and "Too many attempts" in blocked.text


def test_health_readiness_metrics_and_headers(gateway) -> None:  # type: ignore[no-untyped-def]
    client, _ = gateway
    assert client.get("/healthz").text == "ok\n"
    assert client.get("/readyz").json()["ready"] is True
    forward(client, "/dashboard")
    assert "stepguard_decisions_total" in client.get("/metrics", headers=SCRAPER).text
    page = client.get("/login")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_public_paths_need_no_session(gateway) -> None:  # type: ignore[no-untyped-def]
    client, _ = gateway
    allowed = forward(client, "/healthz")
    assert allowed.status_code == 200
    assert allowed.headers["remote-user"] == ""  # present but empty (Caddy copies unconditionally)


def test_metrics_count_decisions_challenges_and_failures(gateway, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client, alice = gateway
    sign_in(client, alice)
    page_url = forward(client, "/admin/audit").headers["location"].removeprefix(BASE)
    page = client.get(page_url)
    client.post(page_url + "/totp", data={"code": "000000", "csrf_token": csrf(page.text)})
    clock.advance(2)  # past the one-second back-off after a failure
    page = client.get(page_url)
    client.post(page_url + "/totp", data={"code": alice.code(clock.now),
                                          "csrf_token": csrf(page.text)})
    text = client.get("/metrics", headers=SCRAPER).text
    assert 'stepguard_decisions_total{outcome="step_up",rule="admin-pages"} 1.0' in text
    assert 'stepguard_challenges_total{event="started",rule="admin-pages"} 1.0' in text
    assert 'stepguard_challenges_total{event="passed",rule="admin-pages"} 1.0' in text
    assert 'stepguard_verification_failures_total{factor="totp",reason="invalid"} 1.0' in text
    assert 'stepguard_verifications_total{factor="totp",outcome="passed"} 1.0' in text
