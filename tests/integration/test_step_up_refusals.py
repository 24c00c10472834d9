"""A refused step-up proof (wrong TOTP or recovery code, throttled attempt) in the portal.

A browser gets post/redirect/get, as on the sign-in page: a 303 back to the challenge's page (its
embedded view inside the inline dialog), and that GET shows the error once, with the status the
page always had (401 wrong, 429 throttled), so a refresh never sends a code again. A script or
API client (no `text/html` in Accept) is answered directly, 429 with `Retry-After`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user, shown

BASE = "http://localhost:9091"
APP = "https://app.test"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
EMPTY_ALERT = 'id="sg-alert" role="alert" tabindex="-1"></div>'
FORWARD = {"X-Forwarded-Method": "POST", "X-Forwarded-Proto": "http",
           "X-Forwarded-Host": "localhost:9091", "X-Forwarded-Uri": "/admin/users/bob/roles",
           "Accept": "application/json"}


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[TestClient, Seeded, Clock]]:
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock,
                           extra=f'inline: {{allowed_origins: ["{APP}"]}}\n')
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=("127.0.0.1", 1000),
                    follow_redirects=False) as client:
        page = client.get("/login")
        signed = client.post("/login", data={"username": "alice", "password": alice.password,
                                             "csrf_token": csrf(page.text)})
        assert signed.status_code == 303
        yield client, alice, clock
    runtime.close()


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:300]
    return match.group(1)


def challenge(client: TestClient) -> str:
    header = client.get("/api/authz/forward-auth", headers=FORWARD).headers["www-authenticate"]
    match = re.search(r'/step-up/([A-Za-z0-9_-]+)"', header)
    assert match, header
    return match.group(1)


@pytest.mark.parametrize("factor", ["totp", "recovery"])
def test_a_wrong_code_is_post_redirect_get(env, factor: str) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = env
    cid = challenge(client)
    page = client.get(f"/step-up/{cid}")
    wrong = client.post(f"/step-up/{cid}/{factor}",
                        data={"code": "000000", "csrf_token": csrf(page.text)}, headers=HTML)
    assert wrong.status_code == 303 and wrong.headers["location"] == f"/step-up/{cid}"
    assert "000000" not in wrong.headers["location"] + wrong.headers["set-cookie"]
    again = client.get(wrong.headers["location"], headers=HTML)
    assert again.status_code == 401  # the status the page always answered with
    alert = re.search(r"id=\"sg-alert\"[^>]*>([^<]+)<", again.text)
    assert alert and alert.group(1).strip(), again.text[:300]
    refreshed = client.get(f"/step-up/{cid}", headers=HTML)  # shown once: a refresh is clean
    assert refreshed.status_code == 200 and EMPTY_ALERT in refreshed.text


def test_a_throttled_attempt_shows_429_after_its_redirect(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = env
    cid = challenge(client)
    page = client.get(f"/step-up/{cid}")
    first = client.post(f"/step-up/{cid}/totp",
                        data={"code": "000000", "csrf_token": csrf(page.text)}, headers=HTML)
    assert shown(client, first, HTML).status_code == 401
    # At once again (inside the back-off): refused unchecked, even with the right code.
    page = client.get(f"/step-up/{cid}")
    throttled = client.post(f"/step-up/{cid}/totp", headers=HTML,
                            data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)})
    assert throttled.status_code == 303
    seen = shown(client, throttled, HTML)
    assert seen.status_code == 429 and "Too many attempts" in seen.text


def test_api_clients_still_get_the_status_itself(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = env
    cid = challenge(client)
    page = client.get(f"/step-up/{cid}")
    token = csrf(page.text)
    wrong = client.post(f"/step-up/{cid}/totp", data={"code": "000000", "csrf_token": token},
                        headers={"Accept": "application/json"})
    assert wrong.status_code == 401
    throttled = client.post(f"/step-up/{cid}/totp", headers={"Accept": "*/*"},
                            data={"code": alice.code(clock.now), "csrf_token": token})
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1


def test_the_dialog_frame_stays_in_its_embedded_view(env) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = env
    cid = challenge(client)
    keep = f"?view=inline&origin={quote(APP, safe='')}"
    page = client.get(f"/step-up/{cid}/inline{keep}")
    wrong = client.post(f"/step-up/{cid}/totp{keep}", headers=HTML,
                        data={"code": "000000", "csrf_token": csrf(page.text)})
    assert wrong.status_code == 303 and wrong.headers["location"] == f"/step-up/{cid}/inline{keep}"
    frame = client.get(wrong.headers["location"], headers=HTML)
    assert frame.status_code == 401 and f'data-inline-origin="{APP}"' in frame.text
    assert f"frame-ancestors 'self' {APP}" in frame.headers["content-security-policy"]


def test_another_challenges_error_is_not_shown(env) -> None:  # type: ignore[no-untyped-def]
    client, _, clock = env
    first, second = challenge(client), challenge(client)
    assert first != second

    def refuse() -> None:
        page = client.get(f"/step-up/{first}")
        wrong = client.post(f"/step-up/{first}/totp", headers=HTML,
                            data={"code": "000000", "csrf_token": csrf(page.text)})
        assert wrong.status_code == 303 and "stepguard_flash" in wrong.headers["set-cookie"]

    refuse()
    other = client.get(f"/step-up/{second}", headers=HTML)  # the flash is for the first one
    assert other.status_code == 200 and EMPTY_ALERT in other.text
    clock.advance(10)  # past the back-off
    refuse()
    login = client.get("/login", headers=HTML)  # nor is it the sign-in page's
    assert login.status_code == 200 and EMPTY_ALERT in login.text
