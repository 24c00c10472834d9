"""Real nginx (`auth_request`) and real Caddy (`forward_auth`) in front of a real `stepguard serve`.

Per proxy, one stack on 127.0.0.1: the echo upstream (tests/support/upstream_app.py), a Stepguard
process (`python -m stepguard.cli.main serve`) on its own SQLite file, and the proxy running the
exact file from deploy/ (tests/support/servers.py substitutes only host name and ports). The
public host is `localhost:PORT`; an httpx client pinned to 127.0.0.1 keeps the cookies, and
raw request targets (path tricks httpx would normalise) go out through http.client.

Every test runs through both proxies (issue 4, "Tests"): anonymous → sign-in with `rd`; sign-in
through the proxied portal → the upstream sees Alice's identity; a sensitive route → step-up page
with the reason → TOTP → allowed; past `max_age` → step-up again; API client → RFC 9470 401; and
SECURITY.md cases 1–4 as an outside client can attempt them through each real proxy.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from stepguard.config.load import load_config
from stepguard.service.runtime import build_runtime
from tests.support.gateway import Seeded, seed_user, write_config
from tests.support.servers import (
    IDENTITY_HEADERS,
    Caddy,
    Nginx,
    Process,
    UvicornServer,
    caddyfile,
    free_port,
    nginx_conf,
    python_env,
    require_binaries,
)
from tests.support.upstream_app import received_headers

pytestmark = pytest.mark.proxy

HOST = "localhost"  # the WebAuthn RP id in write_config; an allowed return domain
AAL1, AAL2 = "urn:stepguard:aal1", "urn:stepguard:aal2"
VAULT_MAX_AGE = 2.0  # seconds: the shortest rule, so "past max_age" costs little waiting
POLICY = f"""\
levels:
  aal2: {{acr: "{AAL2}", max_session: 24h, idle: 1h}}
  aal3: {{acr: "urn:stepguard:aal3", max_session: 12h, idle: 15m}}
networks:
  office: [10.20.0.0/16]
rules:
  - name: public
    match: {{paths: ["/public/**", "/healthz"]}}
    allow: true
  - name: manage-roles
    match: {{methods: [POST, PUT, DELETE], paths: ["/manage/users/*/roles"]}}
    require: {{level: aal2, max_age: 5m, methods: [totp], scope: admin,
              reason: "Changing someone's roles"}}
  - name: vault
    match: {{paths: ["/vault/**"]}}
    require: {{level: aal2, max_age: {VAULT_MAX_AGE:.0f}s, methods: [totp], scope: vault,
              reason: "Opening the vault"}}
  - name: preview-report
    mode: report
    match: {{paths: ["/preview/**"]}}
    require: {{level: aal2, max_age: 5m, reason: "Previewing a new rule"}}
  - name: api-reports
    match: {{paths: ["/api/reports/**"]}}
    require: {{level: aal2, max_age: 10m, reason: "Reading reports"}}
  - name: this-host-ledger
    match: {{hosts: ["{HOST}"], paths: ["/ledger/**"]}}
    require: {{level: aal2, max_age: 10m, reason: "Reading this host's ledger"}}
  - name: customers-outside-office
    match: {{paths: ["/customers/**"]}}
    when: "not network in office"
    require: {{level: aal2, max_age: 1h, reason: "Reading customer data from outside the office"}}
default: {{level: aal1}}
"""
HTML = {"Accept": "text/html,application/xhtml+xml"}
JSON = {"Accept": "application/json"}
FORGED_IDENTITY = {
    **{name: "mallory" for name in IDENTITY_HEADERS},
    **{name.upper(): "mallory" for name in IDENTITY_HEADERS},
    **{name.lower().replace("-", "_"): "mallory" for name in IDENTITY_HEADERS},
}
OFFICE_IP = "10.20.0.7"


def forged_forwarding(origin_host: str) -> dict[str, str]:
    """Every header a client could use to lie about its address, the URL, host or method."""
    return {
        "X-Forwarded-For": OFFICE_IP,
        "X-Real-IP": OFFICE_IP,
        "Forwarded": f"for={OFFICE_IP};host=evil.example;proto=https",
        "X-Original-URL": f"http://{origin_host}/public/x",
        "X-Original-Method": "GET",
        "X-Forwarded-Uri": "/public/x",
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
    }


# --- the stack -------------------------------------------------------------------------------


class PinnedTransport(httpx.BaseTransport):
    """Sends every request to 127.0.0.1 (keeping the URL, Host header and cookie domain)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pinned = httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        return self._inner.handle_request(pinned)

    def close(self) -> None:
        self._inner.close()


@dataclass
class Stack:
    kind: str
    proxy: Nginx | Caddy
    stepguard: Process
    users: dict[str, Seeded]
    config: Path | None = None

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.proxy.port}"

    @property
    def authority(self) -> str:
        return f"{HOST}:{self.proxy.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.origin,
            transport=PinnedTransport(),
            follow_redirects=False,
            trust_env=False,
            timeout=10.0,
        )

    def local(self, location: str) -> str:
        """The path of a Location that must point back at this proxy's public origin."""
        assert location.startswith(self.origin + "/"), location
        return location.removeprefix(self.origin)

    @property
    def refused(self) -> set[int]:
        """An ambiguous request: Stepguard's 400 through Caddy; through nginx, which can pass on
        only 401 and 403 from the auth endpoint, Stepguard's 403 (or nginx's own 400)."""
        return {400, 403} if self.kind == "nginx" else {400}

    def redirect_status(self, method: str) -> int:
        """What a browser gets for a step-up: nginx's `error_page` answers 302 for any method;
        Caddy passes Stepguard's own answer on (302 for GET/HEAD, 303 otherwise)."""
        return 302 if self.kind == "nginx" or method in ("GET", "HEAD") else 303

    def raw(
        self,
        method: str,
        target: str,
        *,
        client: httpx.Client | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with the target sent byte for byte (httpx would normalise `/../`)."""
        sent = {"Host": self.authority, **HTML, **(headers or {})}
        if client is not None and client.cookies:
            sent["Cookie"] = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
        connection = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=10.0)
        try:
            connection.request(method, target, body=body, headers=sent)
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()


    def socket_request(self, request_line: bytes, *, headers: list[bytes] | None = None,
                       client: httpx.Client | None = None, body: bytes = b"") -> tuple[int, bytes]:
        """One request written byte for byte on a socket: `#`, raw non-ASCII and control bytes
        reach the proxy exactly as an attacker sends them (http.client refuses them)."""
        lines = [request_line, b"Host: " + self.authority.encode(), b"Accept: text/html",
                 b"Connection: close", *(headers or [])]
        if client is not None and client.cookies:
            lines.append(b"Cookie: " + "; ".join(
                f"{c.name}={c.value}" for c in client.cookies.jar).encode())
        if body:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10.0) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        return int(status_line.split()[1]), rest


@pytest.fixture(autouse=True)
def _demo_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Replaces tests/e2e/conftest.py's fixture of this name (no demo server here); on failure
    prints this stack's logs instead."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "stack" not in request.fixturenames:
        return
    stack: Stack = request.getfixturevalue("stack")
    print(f"--- stepguard log (tail) ---\n{stack.stepguard.log_tail(60)}")
    print(f"--- {stack.kind} log (tail) ---\n{stack.proxy.log_tail(20)}")
    if isinstance(stack.proxy, Nginx):
        print(f"--- nginx error.log ---\n{stack.proxy.error_log()[-4000:]}")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    workdir = tmp_path_factory.mktemp("upstream")
    with UvicornServer("tests.support.upstream_app:app", workdir, name="upstream") as server:
        yield server


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def stack(
    request: pytest.FixtureRequest,
    upstream: UvicornServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    kind: str = request.param
    require_binaries(kind)
    workdir = tmp_path_factory.mktemp(f"stack-{kind}")
    proxy_port, stepguard_port = free_port(), free_port()
    config = write_config(
        workdir / "stepguard", public_url=f"http://{HOST}:{proxy_port}", policy=POLICY
    )
    users = seed_users(config)
    stepguard = Process(
        [
            sys.executable,
            "-m",
            "stepguard.cli.main",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(stepguard_port),
        ],
        port=stepguard_port,
        workdir=workdir / "stepguard",
        name="stepguard",
        env=python_env(),
        ready_path="/healthz",
    )
    ports = {
        "listen_port": proxy_port,
        "stepguard_port": stepguard_port,
        "upstream_port": upstream.port,
    }
    proxy: Nginx | Caddy = (
        Nginx(nginx_conf(**ports, server_name=HOST), workdir / "nginx")
        if kind == "nginx"
        else Caddy(caddyfile(**ports, site_name=HOST), workdir / "caddy")
    )
    with stepguard, proxy:
        yield Stack(kind, proxy, stepguard, users, config)


def seed_users(config: Path) -> dict[str, Seeded]:
    """Alice (admins) and Carol, each with a password and a TOTP secret, on the server's store."""
    runtime = build_runtime(load_config(config))
    try:
        return {name: seed_user(runtime, name) for name in ("alice", "carol")}
    finally:
        runtime.close()


# --- portal steps ----------------------------------------------------------------------------


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def sign_in(client: httpx.Client, user: Seeded, *, rd: str | None = None) -> httpx.Response:
    params = {"rd": rd} if rd is not None else None
    page = client.get("/login", params=params, headers=HTML)
    assert page.status_code == 200, page.text
    response = client.post(
        "/login",
        params=params,
        headers=HTML,
        data={
            "username": user.user.username,
            "password": user.password,
            "csrf_token": csrf(page.text),
        },
    )
    assert response.status_code == 303, response.text
    return response


def pass_totp(stack: Stack, client: httpx.Client, step_up_path: str, code: str) -> httpx.Response:
    page = client.get(step_up_path, headers=HTML)
    assert page.status_code == 200, page.text
    done = client.post(
        f"{step_up_path}/totp", headers=HTML, data={"code": code, "csrf_token": csrf(page.text)}
    )
    assert done.status_code == 303, done.text
    return done


def step_up_path(stack: Stack, response: httpx.Response, method: str = "GET") -> str:
    assert response.status_code == stack.redirect_status(method), response.text
    path = stack.local(response.headers["location"])
    assert re.fullmatch(r"/step-up/[A-Za-z0-9_-]+", path), path
    return path


def echoed(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict) and "headers" in body, body
    return body


def all_values(echo: dict[str, object]) -> list[str]:
    headers = echo["headers"]
    assert isinstance(headers, list)
    return [str(value) for _, value in headers]


def identity(echo: dict[str, object]) -> dict[str, list[str]]:
    return {name: received_headers(echo, name) for name in IDENTITY_HEADERS}


# --- the flows -------------------------------------------------------------------------------


def test_anonymous_browser_is_sent_to_sign_in_with_the_original_url(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/dashboard?tab=2", headers=HTML)
        posted = client.post("/transfers", headers=HTML, data={"amount": "5"})
        login = client.get(stack.local(response.headers["location"]), headers=HTML)

    original = f"{stack.origin}/dashboard?tab=2"
    assert response.status_code == 302
    assert response.headers["location"] == f"{stack.origin}/login?rd={quote(original, safe='')}"
    assert posted.status_code == stack.redirect_status("POST")
    assert stack.local(posted.headers["location"]).startswith("/login?rd=")
    assert login.status_code == 200 and 'name="csrf_token"' in login.text


def test_signed_in_through_the_proxy_the_upstream_sees_alice(stack: Stack) -> None:
    alice = stack.users["alice"]
    original = f"{stack.origin}/dashboard?tab=2"
    with stack.client() as client:
        signed = sign_in(client, alice, rd=original)
        assert signed.headers["location"] == original
        echo = echoed(client.get(stack.local(original), headers=HTML))

    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/dashboard", "tab=2")
    assert identity(echo) == {
        "Remote-User": ["alice"],
        "Remote-Groups": ["admins"],
        "Remote-Email": ["alice@example.com"],
        "Remote-Name": ["Alice"],
        "Stepguard-Acr": [AAL1],
        "Stepguard-Amr": ["pwd"],
    }


def test_a_report_mode_rule_lets_the_request_through_and_is_audited(stack: Stack) -> None:
    """Shadow mode through the real proxy: the upstream is reached with alice's identity, and
    the server's ledger holds the would-be step-up."""
    alice = stack.users["alice"]
    with stack.client() as client:
        sign_in(client, alice)
        response = client.get(f"/preview/{stack.kind}", headers=HTML)
    assert response.status_code == 200, response.text
    assert identity(echoed(response))["Remote-User"] == ["alice"]
    assert stack.config is not None
    runtime = build_runtime(load_config(stack.config), migrate=False)
    try:
        deadline = time.monotonic() + 10
        while True:
            found = [e for e in runtime.audit_log.entries(kind="decision", rule="preview-report")
                     if e.request.get("path") == f"/preview/{stack.kind}"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        runtime.close()
    assert [e.outcome for e in found] == ["would_step_up"]
    assert found[0].decision == "allow"


def test_sensitive_route_steps_up_with_its_reason_and_totp_lets_it_through(stack: Stack) -> None:
    alice = stack.users["alice"]
    with stack.client() as client:
        sign_in(client, alice)
        token_before = client.cookies["stepguard_session"]
        stepped = client.post("/manage/users/bob/roles", headers=HTML, data={"role": "admin"})
        path = step_up_path(stack, stepped, "POST")
        page = client.get(path, headers=HTML)
        done = pass_totp(stack, client, path, alice.code(time.time()))
        allowed = client.post("/manage/users/bob/roles", headers=HTML, data={"role": "admin"})
        assert client.cookies["stepguard_session"] != token_before  # rotated (case 11)

    assert "Changing someone" in page.text
    assert done.headers["location"] == f"{stack.origin}/manage/users/bob/roles"
    echo = echoed(allowed)
    assert (echo["method"], echo["body"]) == ("POST", "role=admin")
    assert received_headers(echo, "Remote-User") == ["alice"]
    assert received_headers(echo, "Stepguard-Acr") == [AAL2]
    assert "otp" in received_headers(echo, "Stepguard-Amr")[0]


def test_past_max_age_the_same_route_steps_up_again(stack: Stack) -> None:
    carol = stack.users["carol"]
    with stack.client() as client:
        sign_in(client, carol)
        first = step_up_path(stack, client.get("/vault/keys", headers=HTML))
        pass_totp(stack, client, first, carol.code(time.time()))
        proved = time.monotonic()
        assert received_headers(echoed(client.get("/vault/keys", headers=HTML)), "Remote-User") == [
            "carol"
        ]
        time.sleep(max(0.0, VAULT_MAX_AGE + 0.3 - (time.monotonic() - proved)))
        again = step_up_path(stack, client.get("/vault/keys", headers=HTML))
        # The next TOTP step (within the ±1 skew): the step used above is spent (case 5).
        pass_totp(stack, client, again, carol.code(time.time() + 30))
        allowed = client.get("/vault/keys", headers=HTML)

    assert again != first
    assert received_headers(echoed(allowed), "Stepguard-Acr") == [AAL2]


def test_api_client_gets_an_rfc9470_challenge(stack: Stack) -> None:
    with stack.client() as client:
        anonymous = client.get("/api/orders", headers=JSON)
        sign_in(client, stack.users["alice"])
        stale = client.get("/api/reports/q1", headers=JSON)

    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith(
        'Bearer error="insufficient_user_authentication"'
    )
    assert f'acr_values="{AAL1}"' in anonymous.headers["www-authenticate"]
    assert stale.status_code == 401
    challenge = stale.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert f'acr_values="{AAL2}"' in challenge and "max_age=600" in challenge
    assert 'error_description="Reading reports' in challenge
    if stack.kind == "caddy":  # nginx copies only WWW-Authenticate from the auth answer
        assert stack.local(stale.json()["challenge_url"]).startswith("/step-up/")


def test_xhr_outside_api_gets_the_401_and_a_browser_the_redirect(stack: Stack) -> None:
    """docs/proxies.md: in nginx's `location /` a 401 without a portal Location passes through."""
    xhr = {**JSON, "X-Requested-With": "XMLHttpRequest"}
    with stack.client() as client:
        anonymous = client.get("/reports/q1", headers=xhr)
        sign_in(client, stack.users["alice"])
        stale = client.get("/vault/keys", headers=xhr)
        allowed = client.get("/reports/q1", headers=xhr)

    assert anonymous.status_code == 401, anonymous.headers
    assert f'acr_values="{AAL1}"' in anonymous.headers["www-authenticate"]
    assert stale.status_code == 401, stale.headers
    assert f'acr_values="{AAL2}"' in stale.headers["www-authenticate"]
    assert received_headers(echoed(allowed), "Remote-User") == ["alice"]


# --- SECURITY.md case 1: forwarded headers from the client change nothing ----------------------


def test_forged_forwarding_headers_do_not_change_an_anonymous_decision(stack: Stack) -> None:
    with stack.client() as client:
        plain = client.get("/dashboard", headers=HTML)
        forged = client.get("/dashboard", headers={**HTML, **forged_forwarding(stack.authority)})

    assert plain.status_code == forged.status_code == 302
    expected = f"{stack.origin}/login?rd={quote(stack.origin + '/dashboard', safe='')}"
    assert plain.headers["location"] == forged.headers["location"] == expected


@pytest.mark.parametrize(
    "method, path, reason",
    [
        ("POST", "/manage/users/bob/roles", "Changing someone"),
        ("GET", "/customers/42", "Reading customer data from outside the office"),
    ],
)
def test_forged_forwarding_headers_do_not_change_a_step_up(
    stack: Stack, method: str, path: str, reason: str
) -> None:
    """A forged office address, public URI, GET method or other host would each turn this step-up
    into an allow (or a return URL elsewhere) if Stepguard believed it."""
    with stack.client() as client:
        sign_in(client, stack.users["alice"])
        plain = client.request(method, path, headers=HTML)
        forged = client.request(
            method, path, headers={**HTML, **forged_forwarding(stack.authority)}
        )
        pages = [client.get(step_up_path(stack, r, method), headers=HTML) for r in (plain, forged)]

    # Same decision: a step-up for the same reason, holding the real URL, not a forged one.
    for page in pages:
        assert page.status_code == 200
        assert reason in page.text.replace("&#39;", "'")
        assert f"{stack.origin}{path}</span>" in page.text
        assert "/public/x" not in page.text and "evil.example" not in page.text


def test_forged_client_address_does_not_reach_the_upstream_as_truth(stack: Stack) -> None:
    with stack.client() as client:
        sign_in(client, stack.users["alice"])
        echo = echoed(
            client.get("/dashboard", headers={**HTML, **forged_forwarding(stack.authority)})
        )

    assert received_headers(echo, "Remote-User") == ["alice"]
    assert received_headers(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert received_headers(echo, "X-Forwarded-Host") == [stack.authority]
    # Headers the proxy does not set itself are removed, not passed on as the client wrote them.
    assert received_headers(echo, "X-Real-IP") == []
    assert received_headers(echo, "Forwarded") == []
    assert received_headers(echo, "X-Original-URL") == []


# --- SECURITY.md case 2: client-sent identity headers never reach the upstream ------------------


def test_client_identity_headers_are_replaced_for_a_signed_in_user(stack: Stack) -> None:
    with stack.client() as client:
        sign_in(client, stack.users["alice"])
        echo = echoed(client.get("/dashboard", headers={**HTML, **FORGED_IDENTITY}))

    assert received_headers(echo, "Remote-User") == ["alice"]
    assert received_headers(echo, "Stepguard-Acr") == [AAL1]
    assert "mallory" not in all_values(echo)


def test_client_identity_headers_are_dropped_for_an_anonymous_request(stack: Stack) -> None:
    with stack.client() as client:
        echo = echoed(client.get("/public/x", headers={**HTML, **FORGED_IDENTITY}))

    # nginx sends no header for an empty value; Caddy 2.6 copies the empty values it was given.
    expected = [] if stack.kind == "nginx" else [""]
    assert identity(echo) == {name: expected for name in IDENTITY_HEADERS}
    assert "mallory" not in all_values(echo)


def test_client_identity_headers_do_not_sign_anyone_in(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/dashboard", headers={**HTML, **FORGED_IDENTITY})

    assert response.status_code == 302
    assert stack.local(response.headers["location"]).startswith("/login?rd=")


# --- SECURITY.md case 3: path tricks get the canonical decision or a 400 ----------------------

TRICKS = [
    "/manage/users/bob/../bob/roles",
    "/manage/users/x/../bob/roles",
    "/manage/users/bob/%2e%2e/bob/roles",
    "/manage/users/bob/%2E%2E/bob/roles",
    "/manage%2Fusers/bob/roles",
    "/manage/users/bob%2Froles",
    "/manage%5cusers/bob/roles",
    "/manage/users/bob/roles%00",
    "/manage/users/bob/roles;x=1",
    "/manage;x=1/users/bob/roles",
    "//manage/users/bob/roles",
    "/manage//users/bob/roles",
    "/manage/./users/bob/roles",
    "/./manage/users/bob/roles",
    "/MANAGE/users/bob/roles",
    "/manage/USERS/bob/ROLES",
    "/%6danage/users/bob/roles",
]


@pytest.fixture(scope="module")
def alice_signed_in(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        sign_in(client, stack.users["alice"])
        yield client


def test_the_lesser_rule_would_allow_and_the_canonical_path_steps_up(
    stack: Stack, alice_signed_in: httpx.Client
) -> None:
    lesser = stack.raw("POST", "/manage/users/bob/profile", client=alice_signed_in)
    canonical = stack.raw("POST", "/manage/users/bob/roles", client=alice_signed_in)

    assert lesser[0] == 200 and b'"headers"' in lesser[2]
    assert canonical[0] == stack.redirect_status("POST")
    assert stack.local(canonical[1]["location"]).startswith("/step-up/")


@pytest.mark.parametrize("target", TRICKS)
def test_path_tricks_get_the_canonical_decision_or_a_400(
    stack: Stack, alice_signed_in: httpx.Client, target: str
) -> None:
    status, headers, body = stack.raw("POST", target, client=alice_signed_in, body=b"role=admin")

    assert b'"headers"' not in body, f"{target} reached the upstream: {body[:300]!r}"
    if status in stack.refused:
        return
    assert status == stack.redirect_status("POST"), (status, body[:300])
    assert stack.local(headers["location"]).startswith("/step-up/")


@pytest.mark.parametrize("host", [f"{HOST}.", HOST.upper(), f"{HOST}.".upper()])
def test_host_spellings_get_the_canonical_decision_or_no_site(
    stack: Stack, alice_signed_in: httpx.Client, host: str
) -> None:
    authority = f"{host}:{stack.proxy.port}"
    status, headers, body = stack.raw(
        "POST", "/manage/users/bob/roles", client=alice_signed_in, headers={"Host": authority}
    )

    assert b'"headers"' not in body, f"{host} reached the upstream"
    if stack.kind == "caddy" and (status, body) == (200, b""):
        return  # no site has this address: Caddy's empty answer, nothing proxied
    assert status == stack.redirect_status("POST"), (status, body[:300])
    assert "/step-up/" in headers["location"]


def test_another_host_never_reaches_the_upstream(
    stack: Stack, alice_signed_in: httpx.Client
) -> None:
    status, _, body = stack.raw(
        "GET",
        "/dashboard",
        client=alice_signed_in,
        headers={"Host": f"evil.example:{stack.proxy.port}"},
    )

    # nginx: the deploy config's `return 421`; Caddy: no site for that address, an empty 200.
    assert (status, body) == ((421, body) if stack.kind == "nginx" else (200, b""))
    assert b'"headers"' not in body


@pytest.mark.parametrize("host_header", [b"evil.example", b"other.localhost", b""])
def test_an_absolute_form_target_is_decided_for_the_host_the_proxy_routes(
    stack: Stack, alice_signed_in: httpx.Client, host_header: bytes
) -> None:
    """`GET http://localhost:P/ledger/x` with `Host: evil.example`: nginx routes by the request
    line's host ($host) but built X-Original-URL from the Host header ($http_host), so Stepguard
    decided a host-bound rule for a host no rule names and let aal1 through to this host's
    upstream. The decision must be for the host the upstream is served (or a refusal)."""
    target = f"http://{stack.authority}/ledger/x".encode()
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + host_header, b"Accept: text/html",
             b"Connection: close",
             b"Cookie: " + "; ".join(f"{c.name}={c.value}"
                                      for c in alice_signed_in.cookies.jar).encode()]
    with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10.0) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])

    assert b'"headers"' not in answer, f"aal1 reached the ledger: {answer[:400]!r}"
    assert status < 500, answer[:300]
    assert status in (*stack.refused, stack.redirect_status("GET")), answer[:300]


# --- SECURITY.md case 4: open redirects in `rd` are refused -----------------------------------

OPEN_REDIRECTS = [
    "https://evil.example/",
    "//evil.example",
    "/\\evil.example",
    "javascript:alert(1)",
    "http://localhost@evil.example/",
    "%2F%2Fevil.example",
    "https://localhost.evil.example/",
    "http:\\\\evil.example",
    "/%5Cevil.example",
]


@pytest.mark.parametrize("rd", OPEN_REDIRECTS)
def test_open_redirects_in_rd_are_refused(stack: Stack, rd: str) -> None:
    with stack.client() as client:
        response = sign_in(client, stack.users["alice"], rd=rd)

    assert response.headers["location"] == "/account"


# --- issue 9 item 5: a client's Connection header cannot remove the identity headers ----------

HOP_BY_HOP_IDENTITY = ", ".join(["keep-alive", *IDENTITY_HEADERS, "X-Forwarded-For"])


def test_a_connection_list_cannot_drop_the_identity_stepguard_answered(stack: Stack) -> None:
    """A client naming the identity headers in `Connection` would make a proxy that honours it
    delete them after Stepguard's answer set them: the upstream would see nobody (or, behind a
    second proxy, whatever the client adds). The deploy configs neutralise the list."""
    with stack.client() as client:
        sign_in(client, stack.users["alice"])
        status, _, body = stack.raw("GET", "/dashboard", client=client,
                                    headers={"Connection": HOP_BY_HOP_IDENTITY})

    assert status == 200, body[:300]
    echo = json.loads(body)
    assert identity(echo)["Remote-User"] == ["alice"]
    assert identity(echo)["Stepguard-Acr"] == [AAL1]
    assert received_headers(echo, "X-Forwarded-For") == ["127.0.0.1"]


# --- issue 9 item 14: WebSockets, decided at the upgrade ----------------------------------------


def _websocket(stack: Stack, path: str, cookies: httpx.Cookies | None) -> tuple[dict, str]:  # type: ignore[type-arg]
    """Open a WebSocket through the proxy, read the upstream's hello, echo one message."""
    from websockets.sync.client import connect

    cookie = "; ".join(f"{c.name}={c.value}" for c in cookies.jar) if cookies else ""
    headers = {"Cookie": cookie, "Origin": stack.origin} if cookie else {"Origin": stack.origin}
    sock = socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10)
    with connect(f"ws://{stack.authority}{path}", sock=sock, open_timeout=10,
                 additional_headers=headers) as ws:
        hello = json.loads(ws.recv(timeout=10))
        ws.send("ping")
        return hello, str(ws.recv(timeout=10))


def test_an_allowed_user_opens_a_websocket_with_her_identity(stack: Stack) -> None:
    with stack.client() as client:
        sign_in(client, stack.users["alice"])
        hello, echo = _websocket(stack, "/live/feed", client.cookies)

    assert hello["path"] == "/live/feed" and echo == "echo:ping"
    assert identity(hello)["Remote-User"] == ["alice"]


def test_a_websocket_needing_step_up_is_refused_at_the_upgrade(stack: Stack) -> None:
    from websockets.exceptions import InvalidStatus

    with stack.client() as client:
        sign_in(client, stack.users["alice"])
        with pytest.raises(InvalidStatus) as refused:
            _websocket(stack, "/vault/live", client.cookies)
    assert refused.value.response.status_code in (302, 401, 403)
    with pytest.raises(InvalidStatus) as anonymous:
        _websocket(stack, "/live/feed", None)
    assert anonymous.value.response.status_code in (302, 401, 403)


# --- issue 9 items 2, 6, 12: what the proxy, Stepguard and the upstream could read differently ---

RAW_TARGETS = [
    b"/public/x#/../../vault/keys",  # Go's net/http keeps `#…` in the path; path.Clean → /vault
    b"/public/x#",
    b"/public/\xff",  # invalid UTF-8: was decided as latin-1 and allowed
    b"/public/caf\xc3\xa9",  # raw UTF-8: every framework decodes it its own way
    b"/public/%2e%2e/vault/keys",
    b"/public/..%2fvault/keys",
    b"/public/%23/../../vault/keys",
    b"/public/x%3F/../../vault/keys",
    b"/public\\..\\vault/keys",
    b"/public/x;/../../vault/keys",
    b"http://localhost/vault/keys",  # absolute form
    b"*",
]


@pytest.mark.parametrize("target", RAW_TARGETS, ids=repr)
def test_raw_targets_never_reach_the_upstream_undecided(stack: Stack, target: bytes) -> None:
    """An anonymous request: the vault needs aal2, so it must be refused, redirected to sign-in,
    or decided as the path the upstream routes — never passed on as a public path."""
    status, answer = stack.socket_request(b"GET " + target + b" HTTP/1.1")

    assert status < 500, answer[:300]
    if stack.kind == "nginx" and (b"#" in target or not target.isascii()):
        # nginx passes these on raw in X-Original-URL and to the upstream (a Go upstream routes
        # `/public/x#/../../vault/keys` to the vault; uvicorn rejects `\xff` after Stepguard
        # allowed it): refused. Caddy (Go) re-encodes them first (`/public/x%23/../../vault/keys`,
        # `/public/caf%C3%A9`) in X-Forwarded-Uri and upstream alike, so one path is decided.
        assert status in stack.refused, (status, answer[:300])
    if b'"headers"' in answer:
        assert b"#" not in answer.split(b'"query"')[0], answer[:300]
    if b'"headers"' in answer:  # it reached the upstream: only as a public path
        path = re.search(rb'"path":"([^"]*)"', answer)
        assert path and path.group(1).startswith(b"/public/"), answer[:300]
        assert b"vault" not in path.group(1), answer[:300]


@pytest.mark.parametrize("header", [b"X-HTTP-Method-Override: DELETE", b"X-HTTP-Method: DELETE",
                                    b"X-Method-Override: DELETE"])
def test_method_override_headers_are_refused(
    stack: Stack, alice_signed_in: httpx.Client, header: bytes
) -> None:
    """Rails, Laravel and Express run this POST as a DELETE; Stepguard judged it a POST."""
    plain, _ = stack.socket_request(b"POST /dashboard HTTP/1.1", client=alice_signed_in)
    status, answer = stack.socket_request(
        b"POST /dashboard HTTP/1.1", headers=[header], client=alice_signed_in)

    assert plain == 200
    assert status in stack.refused, answer[:300]
    assert b'"headers"' not in answer


def test_method_in_the_query_is_refused(stack: Stack, alice_signed_in: httpx.Client) -> None:
    status, answer = stack.socket_request(
        b"POST /dashboard?_method=DELETE HTTP/1.1", client=alice_signed_in)

    assert status in stack.refused, answer[:300]
    assert b'"headers"' not in answer


@pytest.mark.parametrize("header", [
    b"Cookie: stepguard_session=\x01\x02; stepguard_device=\x7f",
    b"Cookie: \xff\xfe=\x80",
    b'Cookie: stepguard_session="\\"; x=\x1b[31m',
    b"Host: [::1",
    b"X-Forwarded-Uri: \x00",
])
def test_malformed_client_headers_are_never_a_500(stack: Stack, header: bytes) -> None:
    status, answer = stack.socket_request(b"GET /vault/keys HTTP/1.1", headers=[header])

    assert status < 500, answer[:300]
    assert b'"headers"' not in answer
