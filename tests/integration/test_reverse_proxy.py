"""Reverse-proxy mode: identity headers stripped and added, a held POST replayed after step-up."""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from stepguard.adapters.proxy import cookies_header
from stepguard.config.load import load_config
from stepguard.service.accounts import Accounts
from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user
from tests.support.servers import Process, free_port, python_env
from tests.support.upstream_app import app as echo_app

BASE = "http://localhost:9091"
RECEIVED: list[tuple[str, str, bytes]] = []  # (method, path, body) of every upstream request


async def recording_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """The echo app, noting each HTTP request it answers (the "upstream sees" of the tests)."""
    if scope["type"] != "http":
        return await echo_app(scope, receive, send)
    chunks: list[bytes] = []

    async def tapped():  # type: ignore[no-untyped-def]
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            RECEIVED.append((scope["method"], scope["path"], b"".join(chunks)))
        return message

    return await echo_app(scope, tapped, send)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(recording_app, host="127.0.0.1", port=port, log_level="error")
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
    header = [(b"cookie", b"stepguard_session=secret; app_pref=dark; stepguard_device=d.m; b=2")]
    assert cookies_header(header, app._ours) == b"app_pref=dark; b=2"


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
    assert again.status_code == 404  # the held request was sent: there is nothing left to send
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
        assert again.status_code == 404  # sent once; and the single-use grant is spent:
        direct = client.post("/transfers", data={"amount": "5000", "payee": "Bob"},
                             headers={"Accept": "text/html"})
        assert direct.status_code == 303
    runtime.close()


# --- issue 9 item 3: a held request reaches the upstream exactly once --------------------------


def _held_and_passed(client: TestClient, alice: Seeded, clock: Clock, path: str,
                     data: dict[str, str]) -> tuple[str, str]:
    """POST `path` (held for a step-up), pass TOTP: the confirm URL and its CSRF token."""
    held = client.post(path, data=data, headers={"Accept": "text/html"})
    assert held.status_code == 303 and "/step-up/" in held.headers["location"], held.text
    page = client.get(held.headers["location"])
    passed = client.post(held.headers["location"] + "/totp",
                         data={"code": alice.code(clock.now), "csrf_token": csrf(page.text)})
    confirm_url = passed.headers["location"]
    assert confirm_url.endswith("/confirm"), confirm_url
    return confirm_url, csrf(client.get(confirm_url).text)


def test_a_held_request_under_a_max_age_rule_is_sent_once(proxy) -> None:  # type: ignore[no-untyped-def]
    """customers-outside-office is a plain `max_age: 1h` rule: no single-use grant to spend."""
    client, alice, clock = proxy
    sign_in(client, alice)
    confirm_url, token = _held_and_passed(client, alice, clock, "/customers/42",
                                          {"note": "close-account"})
    before = len(RECEIVED)
    first = client.post(confirm_url, data={"csrf_token": token})
    assert first.status_code == 200 and first.json()["body"] == "note=close-account"
    again = client.post(confirm_url, data={"csrf_token": token})  # a double click, a retry
    assert again.status_code == 404
    assert [r for r in RECEIVED[before:] if r[1] == "/customers/42"] == [
        ("POST", "/customers/42", b"note=close-account")]


def test_twenty_concurrent_confirms_send_the_held_request_once(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, clock = proxy
    sign_in(client, alice)
    confirm_url, token = _held_and_passed(client, alice, clock, "/customers/43",
                                          {"note": "wire"})
    before = len(RECEIVED)
    barrier = threading.Barrier(20)

    def confirm(_: int) -> int:
        barrier.wait()
        return client.post(confirm_url, data={"csrf_token": token}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(confirm, range(20)))
    sent = [r for r in RECEIVED[before:] if r[1] == "/customers/43"]
    assert sent == [("POST", "/customers/43", b"note=wire")], statuses
    assert sorted(statuses) == [200] + [404] * 19


# --- issue 9 item 8: a body above the hold limit is refused, never cut -------------------------


def test_a_body_above_the_hold_limit_is_refused_with_a_clear_page(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    limit = client.app.state.runtime.config.challenge.held_body_limit
    fields = {"amount": "5000", "payee": "Bob", "memo": "x" * limit, "last": "kept"}
    before = len(RECEIVED)
    refused = client.post("/transfers", data=fields, headers={"Accept": "text/html"})
    assert refused.status_code == 413
    assert "too large to hold" in refused.text and "step-up" in refused.text.lower()
    assert refused.headers["content-type"].startswith("text/html")
    assert RECEIVED[before:] == []
    # Nothing was held: no challenge with a cut body exists for this session.
    store = client.app.state.runtime.store
    session = store.sessions.list_for_user(alice.user.id)[0]
    assert store.challenges.pending_for_session(session.id, now=1e12) == ()
    small = client.post("/transfers", data={"amount": "5000", "payee": "Bob"},
                        headers={"Accept": "text/html"})
    assert small.status_code == 303  # a body within the limit is still held as before


# --- issue 9 item 5: forwarding headers like a real proxy --------------------------------------

FORGED = {"X-Forwarded-For": "10.20.0.7", "X-Real-IP": "10.20.0.7",
          "Forwarded": "for=10.20.0.7;host=evil.example;proto=https",
          "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}


def test_an_untrusted_clients_forwarding_headers_are_replaced(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    echoed = client.get("/dashboard", headers={"Accept": "text/html", **FORGED}).json()
    assert headers_named(echoed, "x-forwarded-for") == ["203.0.113.5"]
    assert headers_named(echoed, "x-real-ip") == ["203.0.113.5"]
    assert headers_named(echoed, "x-forwarded-host") == ["localhost:9091"]
    assert headers_named(echoed, "x-forwarded-proto") == ["http"]
    assert headers_named(echoed, "forwarded") == []
    # ... and they do not change the decision: the office address is not believed.
    stepped = client.get("/customers/7", headers={"Accept": "text/html", **FORGED})
    assert stepped.status_code == 302 and "/step-up/" in stepped.headers["location"]


@pytest.fixture()
def behind_balancer(tmp_path: Path, upstream: str) -> Iterator[tuple[TestClient, Seeded, Clock]]:
    """Stepguard's reverse proxy behind a trusted balancer at 127.0.0.1."""
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock,
                           extra=f'upstreams: [{{host: "*", url: "{upstream}"}}]\n')
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=("127.0.0.1", 1000),
                    follow_redirects=False) as client:
        yield client, alice, clock
    runtime.close()


def test_behind_a_trusted_balancer_the_clients_address_decides(behind_balancer) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = behind_balancer
    sign_in(client, alice)
    office = client.get("/customers/7", headers={"Accept": "text/html",
                                                 "X-Forwarded-For": "10.20.0.7"})
    assert office.status_code == 200  # the office rule sees the client, not the balancer
    outside = client.get("/customers/7", headers={"Accept": "text/html",
                                                  "X-Forwarded-For": "198.51.100.9"})
    assert outside.status_code == 302 and "/step-up/" in outside.headers["location"]
    echoed = client.get("/dashboard", headers={
        "Accept": "text/html", "X-Forwarded-For": "192.0.2.1, 198.51.100.9",
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.test"}).json()
    # The chain from the client (the rightmost untrusted hop) on, then the balancer.
    assert headers_named(echoed, "x-forwarded-for") == ["198.51.100.9, 127.0.0.1"]
    assert headers_named(echoed, "x-real-ip") == ["198.51.100.9"]
    assert headers_named(echoed, "x-forwarded-proto") == ["https"]
    assert headers_named(echoed, "x-forwarded-host") == ["app.test"]


@pytest.mark.parametrize("garbage", ["not-an-ip", "10.20.0.7, <script>", "999.1.1.1",
                                     "10.20.0.7,,", "1.2.3.4 5.6.7.8"])
def test_garbage_forwarded_for_from_a_trusted_peer_is_refused(behind_balancer, garbage) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = behind_balancer
    sign_in(client, alice)
    before = len(RECEIVED)
    answer = client.get("/dashboard", headers={"Accept": "text/html", "X-Forwarded-For": garbage})
    assert answer.status_code == 400, answer.text
    assert RECEIVED[before:] == []


def test_headers_named_in_connection_are_dropped_but_never_the_identity(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    echoed = client.get("/dashboard", headers={
        "Accept": "text/html", "X-Hop": "1", "X-Kept": "2",
        "Connection": "keep-alive, X-Hop, Remote-User, Remote-Groups, X-Forwarded-For"}).json()
    assert headers_named(echoed, "x-hop") == [] and headers_named(echoed, "x-kept") == ["2"]
    assert headers_named(echoed, "remote-user") == ["alice"]
    assert headers_named(echoed, "remote-groups") == ["admins"]
    assert headers_named(echoed, "x-forwarded-for") == ["203.0.113.5"]


# --- relayed answers: the upstream's `response_headers`, not the portal's page headers ---------

PORTAL_ONLY = ("content-security-policy", "x-frame-options", "permissions-policy",
               "cross-origin-opener-policy", "referrer-policy")


def test_a_relayed_answer_gets_no_store_only_where_the_upstream_set_no_cache_control(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    bare = client.get("/dashboard", headers={"Accept": "text/html", "X-Answer-Cache-Control": ""})
    assert bare.status_code == 200 and bare.headers.get_list("cache-control") == ["no-store"]
    assert [name for name in PORTAL_ONLY if name in bare.headers] == []  # the app's own policy
    own = client.get("/dashboard", headers={"Accept": "text/html",
                                             "X-Answer-Cache-Control": "private, max-age=60"})
    assert own.headers.get_list("cache-control") == ["private, max-age=60"]
    client.cookies.clear()
    stopped = client.get("/dashboard", headers={"Accept": "text/html"})  # Stepguard's answer
    assert stopped.status_code == 302, stopped.text
    assert "frame-ancestors 'none'" in stopped.headers["content-security-policy"]


def test_an_upstreams_response_headers_replace_the_default(tmp_path: Path, upstream: str) -> None:
    runtime = make_runtime(tmp_path, extra=f"""upstreams:
  - host: "*"
    url: "{upstream}"
    response_headers: {{X-Frame-Options: SAMEORIGIN, Cache-Control: private}}
""")
    alice = seed_user(runtime)
    try:
        with TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000),
                        follow_redirects=False) as client:
            sign_in(client, alice)
            bare = client.get("/dashboard", headers={"X-Answer-Cache-Control": ""})
            assert bare.headers["x-frame-options"] == "SAMEORIGIN"
            assert bare.headers.get_list("cache-control") == ["private"]
            own = client.get("/dashboard", headers={"X-Answer-Cache-Control": "max-age=5"})
            assert own.headers.get_list("cache-control") == ["max-age=5"]
    finally:
        runtime.close()


def test_over_https_a_relayed_answer_gets_hsts_where_it_has_none(tmp_path: Path,
                                                                  upstream: str) -> None:
    from stepguard.adapters.proxy import ReverseProxy
    from stepguard.service.guard import Guard
    from stepguard.service.stepup import StepUp
    from stepguard.web.security import HSTS

    runtime = make_runtime(tmp_path, extra=f'upstreams: [{{host: "*", url: "{upstream}"}}]\n')
    try:
        relay = ReverseProxy(runtime, Guard(runtime), StepUp(runtime), https=True)
        [target] = runtime.config.upstreams
        answered = relay.answer_headers(target, [(b"content-type", b"text/plain")])
        assert answered == [(b"content-type", b"text/plain"), (b"cache-control", b"no-store"),
                            (b"strict-transport-security", HSTS.encode())]
        own = [(b"strict-transport-security", b"max-age=60")]
        assert relay.answer_headers(target, own)[0] == own[0] and len(
            [k for k, _ in relay.answer_headers(target, own)
             if k == b"strict-transport-security"]) == 1
    finally:
        runtime.close()


def test_response_headers_stepguard_sets_itself_are_config_errors(tmp_path: Path) -> None:
    from stepguard.config.load import load_config
    from stepguard.core.errors import ConfigError
    from tests.support.gateway import write_config

    config = write_config(tmp_path, extra="""upstreams:
  - host: "*"
    url: "http://127.0.0.1:9"
    response_headers: {Set-Cookie: "a=b"}
  - host: "b.example"
    url: "http://127.0.0.1:9"
    response_headers: {"X-A": "1\\r\\nX-B: 2", "bad name": "1", cache-control: a, Cache-Control: b}
""")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    said = str(raised.value)
    for expected in ("upstreams[0].response_headers", "Set-Cookie is set by Stepguard itself",
                     "upstreams[1].response_headers", "X-A holds a character a header cannot carry",
                     "Cache-Control is named twice",
                     "expected an HTTP header name, got 'bad name'"):
        assert expected in said, said


def test_empty_identity_headers_are_not_sent_and_forged_ones_never_reach_the_upstream(
        tmp_path: Path, upstream: str) -> None:
    runtime = make_runtime(tmp_path, extra=f'upstreams: [{{host: "*", url: "{upstream}"}}]\n')
    password = "correct horse battery"  # bob has no e-mail, name or groups
    Accounts(runtime).add_user("bob", password=password, display_name="", email="", groups=())
    try:
        with TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000),
                        follow_redirects=False) as client:
            page = client.get("/login")
            assert client.post("/login", data={"username": "bob", "password": password,
                                               "csrf_token": csrf(page.text)}).status_code == 303
            echoed = client.get("/dashboard", headers={
                "Accept": "text/html", "Remote-Email": "mallory@evil.example",
                "remote_groups": "admins", "Remote-Name": "Mallory"}).json()
    finally:
        runtime.close()
    for name in ("remote-email", "remote-groups", "remote-name"):
        assert headers_named(echoed, name) == [], name  # no value: not sent, never forged
    assert headers_named(echoed, "remote-user") == ["bob"]


@pytest.mark.parametrize("path", ["/static-v2/app.js", "/accounting", "/administration",
                                  "/login-help"])
def test_an_app_path_that_looks_like_a_portal_path_gets_only_the_upstreams_headers(  # type: ignore[no-untyped-def]
        proxy, path) -> None:
    client, alice, _ = proxy
    sign_in(client, alice)
    answer = client.get(path, headers={"Accept": "text/html"})
    assert answer.status_code == 200 and answer.json()["path"] == path  # relayed
    assert [n for n in PORTAL_ONLY if n in answer.headers] == [], dict(answer.headers)


def test_a_replayed_answer_gets_the_upstreams_response_headers_not_the_portals(
        tmp_path: Path, upstream: str) -> None:
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock, extra=f"""upstreams:
  - host: "*"
    url: "{upstream}"
    response_headers: {{X-Frame-Options: SAMEORIGIN, Cache-Control: private}}
    routes:
      - paths: ["/transfers"]
        action: payments.transfer
        attributes: {{amount: "form:amount", payee: "form:payee"}}
""")
    alice = seed_user(runtime)
    try:
        with TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000),
                        follow_redirects=False) as client:
            sign_in(client, alice)
            held = client.post("/transfers", data={"amount": "5000", "payee": "Bob"},
                               headers={"Accept": "text/html", "X-Answer-Cache-Control": ""})
            assert held.status_code == 303
            page = client.get(held.headers["location"])
            passed = client.post(held.headers["location"] + "/totp", data={
                "code": alice.code(clock.now), "csrf_token": csrf(page.text)})
            confirm = client.get(passed.headers["location"])
            replayed = client.post(passed.headers["location"],
                                   data={"csrf_token": csrf(confirm.text)})
            assert replayed.status_code == 200 and replayed.json()["method"] == "POST"
            assert replayed.headers.get("x-frame-options") == "SAMEORIGIN", replayed.headers
            assert [n for n in PORTAL_ONLY if n in replayed.headers] == ["x-frame-options"]
    finally:
        runtime.close()


def test_an_upstreams_own_hsts_replaces_stepguards(tmp_path: Path, upstream: str) -> None:
    from stepguard.adapters.proxy import ReverseProxy
    from stepguard.service.guard import Guard
    from stepguard.service.stepup import StepUp

    runtime = make_runtime(tmp_path, extra=f"""upstreams:
  - host: "*"
    url: "{upstream}"
    response_headers: {{strict-transport-security: "max-age=300"}}
""")
    try:
        relay = ReverseProxy(runtime, Guard(runtime), StepUp(runtime), https=True)
        [target] = runtime.config.upstreams
        answered = relay.answer_headers(target, [(b"content-type", b"text/plain")])
        assert [v for k, v in answered if k == b"strict-transport-security"] == [b"max-age=300"]
    finally:
        runtime.close()


@pytest.mark.parametrize("value", ["default-src \u2019self\u2019", "a\x0bb", "a\x7fb"])
def test_a_response_header_value_no_server_can_send_is_a_config_error(tmp_path: Path,
                                                                     value: str) -> None:
    from stepguard.config.load import load_config
    from stepguard.core.errors import ConfigError
    from tests.support.gateway import write_config

    escaped = value.encode("unicode_escape").decode()
    config = write_config(tmp_path, extra=f"""upstreams:
  - host: "*"
    url: "http://127.0.0.1:9"
    response_headers: {{X-Note: "{escaped}"}}
""")
    with pytest.raises(ConfigError):
        load_config(config)


def test_a_websocket_upgrade_sends_no_empty_identity_headers(tmp_path: Path, upstream: str) -> None:

    runtime = make_runtime(tmp_path, extra=f'upstreams: [{{host: "*", url: "{upstream}"}}]\n')
    password = "correct horse battery"
    Accounts(runtime).add_user("bob", password=password, display_name="", email="", groups=())
    try:
        with TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000),
                        follow_redirects=False) as client:
            page = client.get("/login")
            client.post("/login", data={"username": "bob", "password": password,
                                        "csrf_token": csrf(page.text)})
            with client.websocket_connect("ws://localhost:9091/live/feed") as ws:
                hello = ws.receive_json()
    finally:
        runtime.close()
    assert headers_named(hello, "remote-user") == ["bob"]
    assert headers_named(hello, "remote-email") == []  # as for HTTP (docs/security.md)


def test_served_in_reverse_proxy_mode_a_relayed_answer_has_one_date(tmp_path: Path,
                                                                     upstream: str) -> None:
    """`server: auto` serves reverse-proxy mode under uvicorn, told to add no Date of its
    own: the upstream's is the only one (two would leave a cache to guess the age)."""
    port = free_port()
    runtime = make_runtime(tmp_path, public_url=f"http://localhost:{port}",
                           extra=f'upstreams: [{{host: "*", url: "{upstream}"}}]\n')
    alice = seed_user(runtime)
    runtime.close()
    assert load_config(tmp_path / "stepguard.yaml").config.http_server() == "uvicorn"
    server = Process([sys.executable, "-m", "stepguard.cli.main", "serve", "-c",
                      str(tmp_path / "stepguard.yaml"), "--host", "127.0.0.1", "--port",
                      str(port)], port=port, workdir=tmp_path, name="stepguard",
                     env=python_env(), ready_path="/healthz")
    with server, httpx.Client(base_url=f"http://localhost:{port}", timeout=10) as client:
        page = client.get("/login")
        signed = client.post("/login", data={"username": "alice", "password": alice.password,
                                             "csrf_token": csrf(page.text)})
        assert signed.status_code == 303, signed.text
        answer = client.get("/dashboard", headers={"Accept": "text/html"})
    assert answer.status_code == 200 and answer.json()["path"] == "/dashboard"
    assert len(answer.headers.get_list("date")) == 1, answer.headers


# --- issue 9 item 14: WebSockets in reverse-proxy mode, decided at the upgrade ------------------


def test_an_allowed_user_opens_a_websocket_to_the_upstream(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    with client.websocket_connect("ws://localhost:9091/live/feed?x=1",
                                  headers={"Remote-User": "mallory"},
                                  subprotocols=["chat"]) as ws:
        hello = ws.receive_json()
        ws.send_text("ping")
        assert ws.receive_text() == "echo:ping"
        ws.send_text("pong")
        assert ws.receive_text() == "echo:pong"
        assert ws.accepted_subprotocol == "chat"
    assert hello["path"] == "/live/feed"
    assert headers_named(hello, "remote-user") == ["alice"]
    assert headers_named(hello, "x-forwarded-for") == ["203.0.113.5"]
    assert not any("stepguard" in v for v in headers_named(hello, "cookie"))


def test_a_websocket_that_needs_step_up_or_sign_in_is_refused_at_the_upgrade(proxy) -> None:  # type: ignore[no-untyped-def]
    from starlette.websockets import WebSocketDisconnect

    client, alice, _ = proxy
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("ws://localhost:9091/live/feed"):
        pass  # anonymous
    sign_in(client, alice)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("ws://localhost:9091/customers/7/live"):
        pass  # the office rule wants a step-up from this address


# --- issue 10: the relay streams what it need not inspect ---------------------------------------


def test_a_body_no_rule_inspects_streams_through_both_ways(proxy) -> None:  # type: ignore[no-untyped-def]
    """2 MiB: above the inspection bound (a buffered relay would refuse it with 413)."""
    client, alice, _ = proxy
    sign_in(client, alice)
    payload = b"0123456789abcdef" * (1 << 17)
    echoed = client.post("/uploads", content=payload,
                         headers={"Content-Type": "application/octet-stream"})
    assert echoed.status_code == 200
    assert echoed.json()["body"].encode() == payload
    head = client.head("/dashboard")
    assert head.status_code == 200 and head.content == b""


def test_an_inspected_body_is_bounded(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    big = client.post("/transfers", data={"amount": "5", "payee": "x" * (2 << 20)})
    assert big.status_code == 413


def test_a_line_break_in_an_identity_value_never_splits_the_upstream_request(
        tmp_path: Path, upstream: str) -> None:
    """An email imported from a directory with `\\r\\nRemote-User: root` in it: the relay's
    header check removed every `\\r\\n` pair before looking for line breaks, so the value went
    out as two header lines and the upstream saw a second identity."""
    runtime = make_runtime(tmp_path, extra=f'upstreams:\n  - host: "*"\n    url: "{upstream}"\n')
    accounts = Accounts(runtime)
    user = accounts.add_user("alice", password="correct horse battery",
                             email="a@example.com\r\nRemote-User: root\r\nX-Injected: 1",
                             groups=("staff\r\nremote-groups: admins",))
    with TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000),
                    follow_redirects=False) as client:
        sign_in(client, Seeded(user, "correct horse battery", ""))
        answer = client.get("/dashboard", headers={"Accept": "text/html"})
    runtime.close()

    assert answer.status_code < 500 or answer.status_code == 502, answer.text
    if answer.status_code == 200:
        echoed = answer.json()
        assert headers_named(echoed, "remote-user") == ["alice"], echoed
        assert headers_named(echoed, "x-injected") == [], echoed
        assert "admins" not in " ".join(headers_named(echoed, "remote-groups")), echoed


# --- fail closed: the store, the upstream and the client failing mid-way -----------------------


def test_a_store_outage_while_deciding_answers_503_and_relays_nothing(proxy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from stepguard.core.errors import StoreUnavailable

    client, alice, _ = proxy
    sign_in(client, alice)
    guard = client.app.state.proxy.guard

    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(guard, "check_cached_key", lambda *_a, **_k: None)
    monkeypatch.setattr(guard, "check_key", down)
    before = len(RECEIVED)
    answer = client.get("/dashboard", headers={"Accept": "text/html"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert RECEIVED[before:] == []


def test_a_store_outage_while_holding_a_request_is_a_503(proxy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The step-up cannot be begun (the held request cannot be stored): never relayed instead."""
    from stepguard.core.errors import StoreUnavailable

    client, alice, _ = proxy
    sign_in(client, alice)
    store = client.app.state.runtime.store

    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(store.challenges, "add", down)
    before = len(RECEIVED)
    answer = client.post("/transfers", data={"amount": "5000", "payee": "Bob"},
                         headers={"Accept": "text/html"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5" and answer.headers["cache-control"] == "no-store"
    assert RECEIVED[before:] == []


def test_a_grant_spent_before_the_confirmation_is_not_replayed(tmp_path: Path,
                                                              upstream: str) -> None:
    """A single-use approval used by a direct request first: the held copy is not sent too."""
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
        confirm_url, token = _held_and_passed(client, alice, clock, "/transfers",
                                              {"amount": "5000", "payee": "Bob"})
        direct = client.post("/transfers", data={"amount": "5000", "payee": "Bob"},
                             headers={"Accept": "text/html"})
        assert direct.status_code == 200  # the grant is spent here
        before = len(RECEIVED)
        late = client.post(confirm_url, data={"csrf_token": token})
        assert late.status_code == 403 and "no longer covers" in late.text
        assert RECEIVED[before:] == []
    runtime.close()


def _dead_port() -> str:
    return f"http://127.0.0.1:{_free_port()}"  # bound and released: nothing listens


def test_an_unreachable_upstream_is_a_502_and_a_websocket_1011(tmp_path: Path) -> None:
    from starlette.websockets import WebSocketDisconnect

    dead = _dead_port()
    runtime = make_runtime(tmp_path, extra=f'upstreams:\n  - host: "*"\n    url: "{dead}"\n')
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.5", 1000),
                    follow_redirects=False) as client:
        sign_in(client, alice)
        assert client.get("/dashboard", headers={"Accept": "text/html"}).status_code == 502
        with pytest.raises(WebSocketDisconnect) as closed, \
                client.websocket_connect("ws://localhost:9091/live/feed") as ws:
            ws.receive_text()
        assert closed.value.code == 1011
    runtime.close()


def test_a_websocket_relays_binary_messages_both_ways(proxy) -> None:  # type: ignore[no-untyped-def]
    client, alice, _ = proxy
    sign_in(client, alice)
    with client.websocket_connect("ws://localhost:9091/live/feed") as ws:
        ws.receive_json()
        ws.send_bytes(b"\x00\xffbinary")
        assert ws.receive_bytes() == b"echo:\x00\xffbinary"


def test_a_client_gone_in_the_middle_of_an_inspected_body_relays_nothing(proxy) -> None:  # type: ignore[no-untyped-def]
    """The body is read before deciding (a form POST); the client hangs up half-way."""
    import asyncio

    client, alice, _ = proxy
    sign_in(client, alice)
    app = client.app
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    scope = {"type": "http", "method": "POST", "scheme": "http", "path": "/transfers",
             "raw_path": b"/transfers", "query_string": b"", "http_version": "1.1",
             "client": ("203.0.113.5", 1000), "server": ("localhost", 9091), "root_path": "",
             "headers": [(b"host", b"localhost:9091"), (b"cookie", cookie.encode()),
                         (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", b"100")]}
    messages = iter([{"type": "http.request", "body": b"amount=50&pay", "more_body": True},
                     {"type": "http.disconnect"}])
    sent: list[dict] = []  # type: ignore[type-arg]

    async def receive():  # type: ignore[no-untyped-def]
        return next(messages)

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    before = len(RECEIVED)
    from starlette.requests import ClientDisconnect

    with pytest.raises(ClientDisconnect):
        asyncio.run(app(scope, receive, send))
    assert RECEIVED[before:] == [] and sent == []


def test_a_streamed_body_that_needs_a_step_up_above_the_hold_limit_is_refused(proxy) -> None:  # type: ignore[no-untyped-def]
    """No rule inspects an octet-stream body, so it is not read before deciding; once the
    decision is a step-up it is read to be held, and above the limit refused, never cut."""
    client, alice, _ = proxy
    sign_in(client, alice)
    limit = client.app.state.runtime.config.challenge.held_body_limit
    before = len(RECEIVED)
    refused = client.put("/customers/42", content=b"z" * (limit + 1),
                         headers={"Content-Type": "application/octet-stream",
                                  "Accept": "text/html"})
    assert refused.status_code == 413 and "too large to hold" in refused.text
    assert RECEIVED[before:] == []


def test_a_host_without_an_upstream_gets_404_and_nothing_is_relayed(tmp_path: Path,
                                                                    upstream: str) -> None:
    runtime = make_runtime(tmp_path, extra=f'upstreams:\n  - host: "app.test"\n'
                                           f'    url: "{upstream}"\n')
    before = len(RECEIVED)
    with TestClient(create_app(runtime), base_url="http://other.test",
                    follow_redirects=False) as client:
        answer = client.get("/dashboard", headers={"Accept": "text/html"})
    runtime.close()
    assert answer.status_code == 404 and "no upstream for this host" in answer.text
    assert RECEIVED[before:] == []
