"""Reverse-proxy mode: identity headers stripped and added, a held POST replayed after step-up."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.testclient import TestClient

from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user
from tests.support.upstream_app import app as echo_app

BASE = "http://localhost:9091"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(echo_app, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


@pytest.fixture()
def proxy(tmp_path: Path, upstream: str) -> Iterator[tuple[TestClient, Seeded, Clock]]:
    clock = Clock()
    extra = f"""upstreams:
  - host: "*"
    url: "{upstream}"
    routes:
      - paths: ["/transfers"]
        action: payments.transfer
        attributes: {{amount: "form:amount", payee: "form:payee"}}
"""
    runtime = make_runtime(tmp_path, clock=clock, extra=extra)
    alice = seed_user(runtime)
    with TestClient(
        create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000), follow_redirects=False
    ) as client:
        yield client, alice, clock
    runtime.close()


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def sign_in(client: TestClient, user: Seeded) -> None:
    page = client.get("/login")
    assert (
        client.post(
            "/login",
            data={"username": "alice", "password": user.password, "csrf_token": csrf(page.text)},
        ).status_code
        == 303
    )


def headers_named(echoed: dict, name: str) -> list[str]:  # type: ignore[type-arg]
    wanted = name.lower().replace("_", "-")
    return [v for k, v in echoed["headers"] if k.lower().replace("_", "-") == wanted]


def test_client_sent_identity_headers_never_reach_the_upstream(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    echoed = client.get(
        "/dashboard",
        headers={
            "Remote-User": "mallory",
            "remote_user": "mallory",
            "REMOTE-GROUPS": "admins",
            "Accept": "text/html",
        },
    ).json()
    assert headers_named(echoed, "remote-user") == ["alice"]
    assert headers_named(echoed, "remote-groups") == ["admins"]
    assert not any("mallory" in v for _, v in echoed["headers"])
    # Stepguard's cookies (the session token!) never reach the app.
    assert not any("stepguard" in v for v in headers_named(echoed, "cookie"))


def test_the_apps_own_cookies_pass_and_stepguards_do_not(proxy) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = proxy
    app = client.app.state.proxy  # the ReverseProxy behind the catch-all route
    header = [("cookie", "stepguard_session=secret; app_pref=dark; stepguard_device=d.m; b=2")]
    assert app._app_cookies(header) == "app_pref=dark; b=2"


def test_anonymous_api_client_gets_rfc9470_and_browser_the_sign_in(proxy) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = proxy
    assert (
        client.get("/dashboard", headers={"Accept": "text/html"})
        .headers["location"]
        .startswith("/login?rd=")
    )
    api = client.get("/dashboard", headers={"Accept": "application/json"})
    assert (
        api.status_code == 401
        and "insufficient_user_authentication" in api.headers["www-authenticate"]
    )


def test_held_post_is_replayed_once_after_step_up(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = proxy
    sign_in(client, alice)
    small = client.post(
        "/transfers", data={"amount": "50", "payee": "Bob"}, headers={"Accept": "text/html"}
    )
    assert small.status_code == 200 and small.json()["body"] == "amount=50&payee=Bob"
    held = client.post(
        "/transfers", data={"amount": "5000", "payee": "Bob"}, headers={"Accept": "text/html"}
    )
    assert held.status_code == 303
    page = client.get(held.headers["location"])
    assert "Approve a transfer of 5000 to Bob" in page.text
    passed = client.post(
        held.headers["location"] + "/totp",
        data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)},
    )
    confirm_url = passed.headers["location"]
    confirm = client.get(confirm_url)
    assert confirm.status_code == 200 and "5000" in confirm.text and "Bob" in confirm.text
    replayed = client.post(confirm_url, data={"csrf_token": csrf(confirm.text)})
    assert replayed.status_code == 200
    echoed = replayed.json()
    assert echoed["method"] == "POST" and echoed["body"] == "amount=5000&payee=Bob"
    assert headers_named(echoed, "remote-user") == ["alice"]
    again = client.post(confirm_url, data={"csrf_token": csrf(confirm.text)})
    assert again.status_code == 403  # the single-use grant is spent
    direct = client.post(
        "/transfers", data={"amount": "5000", "payee": "Bob"}, headers={"Accept": "text/html"}
    )
    assert direct.status_code == 303  # and cannot be reused directly either


def test_a_grant_for_bob_does_not_cover_mallory(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = proxy
    sign_in(client, alice)
    held = client.post(
        "/transfers", data={"amount": "100", "payee": "Bob"}, headers={"Accept": "text/html"}
    )
    assert held.status_code == 200  # small: no step-up
    big = client.post(
        "/transfers", data={"amount": "1500", "payee": "Bob"}, headers={"Accept": "text/html"}
    )
    page = client.get(big.headers["location"])
    client.post(
        big.headers["location"] + "/totp",
        data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)},
    )
    other = client.post(
        "/transfers", data={"amount": "10000", "payee": "Mallory"}, headers={"Accept": "text/html"}
    )
    assert other.status_code == 303  # a different transaction needs its own approval


ACTION_POLICY = """\
attributes: {amount: number, payee: string}
rules:
  - name: large-transfer-by-action
    match: {actions: [payments.transfer]}
    when: "amount > 1000"
    require: {level: aal2, max_age: 0s, single_use: true, bind: [amount, payee],
              reason: "Approve a transfer of {amount} to {payee}"}
default: {level: aal1}
"""


def test_the_replay_is_decided_by_the_same_action_rule(tmp_path: Path, upstream: str) -> None:
    clock = Clock()
    extra = f"""upstreams:
  - host: "*"
    url: "{upstream}"
    routes:
      - paths: ["/transfers"]
        action: payments.transfer
        attributes: {{amount: "form:amount", payee: "form:payee"}}
"""
    runtime = make_runtime(tmp_path, clock=clock, extra=extra, policy=ACTION_POLICY)
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000),
                    follow_redirects=False) as client:
        sign_in(client, alice)
        held = client.post("/transfers", data={"amount": "5000", "payee": "Bob"},
                           headers={"Accept": "text/html"})
        page = client.get(held.headers["location"])
        passed = client.post(held.headers["location"] + "/totp",
                             data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)})
        confirm = client.get(passed.headers["location"])
        first = client.post(passed.headers["location"], data={"csrf_token": csrf(confirm.text)})
        assert first.status_code == 200 and first.json()["body"] == "amount=5000&payee=Bob"
        again = client.post(passed.headers["location"], data={"csrf_token": csrf(confirm.text)})
        assert again.status_code == 403  # the action rule spent its single-use grant
    runtime.close()
