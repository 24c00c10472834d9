"""The inline step-up door's rules (issue 15), through the whole application.

- The dialog frame (`/step-up/{cid}/inline`) is framable only by the portal's own origin and the
  configured `inline.allowed_origins`, exactly; any other origin gets a refusal that is not
  framable at all, and the full step-up page stays unframable whatever its query says.
- The frame answers its parent only at that exact origin, and "passed" only for this session's
  passed challenge.
- `stepguard.js` is served with CORS for the allowed origins only, never with credentials.
- The RFC 9470 header names the challenge (`stepguard_challenge`), so the dialog finds it behind
  nginx, which passes only that header of a 401 on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from stepguard.config.schema import InlineSection
from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user

BASE = "http://localhost:9091"
APP = "https://app.test"
EVIL = "https://evil.test"
FORWARD = {"X-Forwarded-Method": "POST", "X-Forwarded-Proto": "http",
           "X-Forwarded-Host": "localhost:9091", "X-Forwarded-Uri": "/admin/users/bob/roles",
           "Accept": "application/json"}


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[TestClient, Seeded, Clock, Path]]:
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock,
                           extra=f'inline: {{allowed_origins: ["{APP}"]}}\n')
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=("127.0.0.1", 1000),
                    follow_redirects=False) as client:
        yield client, alice, clock, tmp_path
    runtime.close()


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:300]
    return match.group(1)


def sign_in(client: TestClient, user: Seeded) -> None:
    page = client.get("/login")
    answer = client.post("/login", data={"username": user.user.username,
                                         "password": user.password, "csrf_token": csrf(page.text)})
    assert answer.status_code == 303


def challenge(client: TestClient) -> str:
    """A step-up challenge through forward-auth; its id, read from the RFC 9470 header."""
    answer = client.get("/api/authz/forward-auth", headers=FORWARD)
    assert answer.status_code == 401
    header = answer.headers["www-authenticate"]
    match = re.search(r'stepguard_challenge="http://localhost:9091/step-up/([A-Za-z0-9_-]+)"',
                      header)
    assert match, header
    assert header.startswith('Bearer error="insufficient_user_authentication"')
    return match.group(1)


def frame_url(cid: str, origin: str, tail: str = "/inline") -> str:
    return f"/step-up/{cid}{tail}?view=inline&origin={quote(origin, safe='')}"


def frame_ancestors(response) -> str:  # type: ignore[no-untyped-def]
    policy = response.headers["content-security-policy"]
    return next(p.strip() for p in policy.split(";") if "frame-ancestors" in p)


def test_the_frame_is_framable_by_allowed_origins_only(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, _, _ = env
    sign_in(client, alice)
    cid = challenge(client)
    for origin in (APP, BASE):
        page = client.get(frame_url(cid, origin))
        assert page.status_code == 200
        assert frame_ancestors(page) == f"frame-ancestors 'self' {APP}"
        assert page.headers["x-frame-options"] == "SAMEORIGIN"
        assert page.headers["cross-origin-opener-policy"] == "unsafe-none"  # the popup variant
        assert f'data-inline-origin="{origin}"' in page.text
        assert "Confirm with code" in page.text and "Cancel" in page.text
    for origin in (EVIL, "null", APP.upper(), APP + "/", APP + ":443", "", "*"):
        refused = client.get(frame_url(cid, origin))
        assert refused.status_code == 403, origin
        assert frame_ancestors(refused) == "frame-ancestors 'none'"
        assert refused.headers["x-frame-options"] == "DENY"
        assert "data-inline-origin" not in refused.text
    full = client.get(f"/step-up/{cid}?view=inline&origin={quote(EVIL, safe='')}")
    assert full.status_code == 200 and frame_ancestors(full) == "frame-ancestors 'none'"
    assert full.headers["cross-origin-opener-policy"] == "same-origin"
    assert "data-inline-origin" not in full.text


def test_totp_in_the_frame_ends_on_the_done_page(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock, _ = env
    sign_in(client, alice)
    cid = challenge(client)
    assert client.get(frame_url(cid, APP, "/inline/done")).status_code == 404  # not passed yet
    page = client.get(frame_url(cid, APP))
    wrong = client.post(frame_url(cid, APP, "/totp"),
                        data={"code": "000000", "csrf_token": csrf(page.text)})
    assert wrong.status_code == 401  # the error stays in the frame, still framable
    assert frame_ancestors(wrong) == f"frame-ancestors 'self' {APP}"
    assert f'data-inline-origin="{APP}"' in wrong.text
    clock.advance(10)  # past the back-off of one failure
    passed = client.post(frame_url(cid, APP, "/totp"),
                         data={"code": alice.code(clock.now), "csrf_token": csrf(wrong.text)})
    assert passed.status_code == 303
    assert passed.headers["location"] == frame_url(cid, APP, "/inline/done")
    done = client.get(passed.headers["location"])
    assert done.status_code == 200 and "data-inline-done" in done.text
    assert f'data-inline-origin="{APP}"' in done.text
    assert f'data-inline-challenge="{cid}"' in done.text
    assert frame_ancestors(done) == f"frame-ancestors 'self' {APP}"
    # The retried request is now allowed (the grant), exactly as the dialog's caller expects.
    assert client.get("/api/authz/forward-auth", headers=FORWARD).status_code == 200
    # The done page never speaks for a foreign origin or for another session.
    assert client.get(frame_url(cid, EVIL, "/inline/done")).status_code == 404
    other = TestClient(client.app, base_url=BASE, follow_redirects=False)
    sign_in(other, alice)
    assert other.get(frame_url(cid, APP, "/inline/done")).status_code == 404


def test_signed_out_frame_tells_the_parent_to_use_a_popup(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, _, _ = env
    sign_in(client, alice)
    cid = challenge(client)
    stranger = TestClient(client.app, base_url=BASE, follow_redirects=False)
    page = stranger.get(frame_url(cid, APP))
    assert page.status_code == 401 and "data-inline-signed-out" in page.text
    assert frame_ancestors(page) == f"frame-ancestors 'self' {APP}"


def test_the_module_is_served_with_cors_for_allowed_origins_only(env) -> None:  # type: ignore[no-untyped-def]
    client, _, _, _ = env
    for origin, allowed in ((APP, APP), (BASE, BASE), (EVIL, None), ("null", None), (None, None)):
        headers = {"Origin": origin} if origin else {}
        module = client.get("/static/inline/stepguard.js", headers=headers)
        assert module.status_code == 200
        assert module.headers["content-type"].startswith("text/javascript")
        assert module.headers.get("access-control-allow-origin") == allowed, origin
        assert "access-control-allow-credentials" not in module.headers
        assert module.headers["vary"] == "Origin"
        assert "export async function stepUpFetch" in module.text


def test_the_inline_door_can_be_turned_off(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, extra="inline: {enabled: false}\n")
    seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, follow_redirects=False) as client:
        assert client.get("/static/inline/stepguard.js").status_code == 404
        assert client.get(frame_url("c1", BASE)).status_code == 403
    runtime.close()


@pytest.mark.parametrize("origin", ["app.test", "https://app.test/", "https://*.app.test",
                                    "https://app.test/path", "ftp://app.test", "https://",
                                    "https://u@app.test", "https://app.test?x"])
def test_allowed_origins_must_be_exact_origins(origin: str) -> None:
    with pytest.raises(ValidationError):
        InlineSection(allowed_origins=[origin])


def test_allowed_origins_are_kept_lower_case() -> None:
    assert InlineSection(allowed_origins=["https://App.Test:8443"]).allowed_origins == [
        "https://app.test:8443"]


def test_a_step_up_passkey_answer_that_is_not_utf8_is_a_400(env) -> None:  # type: ignore[no-untyped-def]
    client, alice, _, _ = env
    sign_in(client, alice)
    cid = challenge(client)
    page = client.get(f"/step-up/{cid}")
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    for body in (b"\xff\xfe", b"not json", b"[]"):
        answer = client.post(f"/step-up/{cid}/webauthn/finish", content=body,
                             headers={"X-CSRF-Token": token, "Origin": BASE})
        assert answer.status_code == 400, (body, answer.status_code)
