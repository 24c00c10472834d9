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


# --- races lost at the store, and the step-up doors' other refusals ----------------------------


def _passes(client: TestClient) -> bool:
    return client.get("/api/authz/forward-auth", headers=FORWARD).status_code == 200


def test_a_totp_code_used_by_a_rival_between_check_and_save_is_a_replay(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Check-then-act (ASVS V15.4.2): another instance saves the same step first; this one's
    compare-and-set fails, and the code does not pass twice."""
    client, alice, clock = env
    store = client.app.state.runtime.store
    real = store.factors.advance_totp_step

    def rival_first(factor_id: str, step: int) -> bool:
        assert real(factor_id, step)  # the other request wins the race
        return bool(real(factor_id, step))

    monkeypatch.setattr(store.factors, "advance_totp_step", rival_first)
    cid = challenge(client)
    page = client.get(f"/step-up/{cid}")
    lost = client.post(f"/step-up/{cid}/totp", headers={"Accept": "application/json"},
                       data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)})
    assert lost.status_code == 401 and "already used" in lost.text
    assert not _passes(client)


def test_a_recovery_code_used_by_a_rival_first_is_a_replay(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from stepguard.factors.recovery import generate_recovery_codes, hash_recovery_code

    client, alice, clock = env
    store = client.app.state.runtime.store
    codes = generate_recovery_codes()
    store.factors.replace_recovery_codes(alice.user.id, [hash_recovery_code(c) for c in codes],
                                         now=clock.now - 5)
    real = store.factors.use_recovery_code

    def rival_first(user_id: str, code_hash: str, *, now: float) -> bool:
        assert real(user_id, code_hash, now=now)
        return bool(real(user_id, code_hash, now=now))

    monkeypatch.setattr(store.factors, "use_recovery_code", rival_first)
    pages = {**FORWARD, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/admin/users"}
    header = client.get("/api/authz/forward-auth", headers=pages).headers["www-authenticate"]
    cid = re.search(r'/step-up/([A-Za-z0-9_-]+)"', header).group(1)  # type: ignore[union-attr]
    page = client.get(f"/step-up/{cid}")
    assert f"/step-up/{cid}/recovery" in page.text  # admin pages take a recovery code
    lost = client.post(f"/step-up/{cid}/recovery", headers={"Accept": "application/json"},
                       data={"code": codes[0], "csrf_token": csrf(page.text)})
    assert lost.status_code == 401 and "already used" in lost.text
    assert client.get("/api/authz/forward-auth", headers=pages).status_code == 401


def test_a_challenge_passed_by_a_rival_first_is_not_passed_again(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = env
    store = client.app.state.runtime.store
    real = store.challenges.mark_passed

    def rival_first(challenge_id: str, *, now: float) -> bool:
        assert real(challenge_id, now=now)
        return bool(real(challenge_id, now=now))

    monkeypatch.setattr(store.challenges, "mark_passed", rival_first)
    cid = challenge(client)
    page = client.get(f"/step-up/{cid}")
    lost = client.post(f"/step-up/{cid}/totp", headers={"Accept": "application/json"},
                       data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)})
    assert lost.status_code == 410, lost.text  # "already used": no second grant, no new token
    assert "stepguard_session" not in lost.headers.get("set-cookie", "")


def test_the_step_up_doors_refuse_without_a_session_or_a_form_token(env) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = env
    cid = challenge(client)
    token = csrf(client.get(f"/step-up/{cid}").text)
    for door in ("totp", "push"):
        no_csrf = client.post(f"/step-up/{cid}/{door}", data={"code": "1"}, headers=HTML)
        assert no_csrf.status_code == 403, door
    gone = client.post("/step-up/no-such-challenge/push", data={"csrf_token": token},
                       headers=HTML)
    assert gone.status_code == 410
    assert client.get("/step-up/no-such-challenge/push/status").json()["status"] == "gone"
    nothing = client.get(f"/step-up/{cid}/confirm")  # not passed: nothing is waiting to be sent
    assert nothing.status_code == 404
    no_proxy = client.post(f"/step-up/{cid}/confirm", data={"csrf_token": token})
    assert no_proxy.status_code == 404
    client.cookies.clear()
    assert client.post(f"/step-up/{cid}/totp", data={"code": "1"}).headers["location"] == "/login"
    assert client.post(f"/step-up/{cid}/push", data={}).headers["location"] == "/login"
    assert client.get(f"/step-up/{cid}/push/status").status_code == 401
    assert client.get(f"/step-up/{cid}/confirm").status_code in (302, 303)


def test_an_expired_challenge_page_says_so(env) -> None:  # type: ignore[no-untyped-def]
    client, _, clock = env
    cid = challenge(client)
    clock.advance(client.app.state.runtime.config.challenge.ttl + 1)
    assert client.get(f"/step-up/{cid}", headers=HTML).status_code == 410
