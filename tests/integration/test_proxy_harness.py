"""The proxy harness and the deploy/ configs, through real nginx and real Caddy.

Stepguard's gateway is replaced here by a stand-in auth server (`stand_in_app`, below) whose
decision is picked by the test through an `X-Test-Auth` request header, so these tests prove the
proxy side alone: what reaches the auth endpoint, what reaches the application, and what the
client gets back for each kind of answer. The configs are exactly the files in deploy/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import (
    DEPLOY_DIR,
    IDENTITY_HEADERS,
    REPO_ROOT,
    Caddy,
    Nginx,
    UvicornServer,
    caddyfile,
    free_port,
    nginx_conf,
)
from tests.support.upstream_app import received_headers

pytestmark = pytest.mark.proxy

ALICE = {
    "Remote-User": "alice",
    "Remote-Groups": "staff,finance",
    "Remote-Email": "alice@example.test",
    "Remote-Name": "Alice Example",
    "Stepguard-Acr": "urn:stepguard:aal2",
    "Stepguard-Amr": "pwd otp",
}
PORTAL = "http://app.test/login?rd=%2Forders"
CHALLENGE = 'Bearer error="insufficient_user_authentication", acr_values="urn:stepguard:aal2"'
FORGED = {
    **{name: "mallory" for name in IDENTITY_HEADERS},
    **{name.lower().replace("-", "_"): "mallory" for name in IDENTITY_HEADERS},
}

# --- the stand-in auth server (runs in its own uvicorn process) --------------------------------

_last_auth_request: dict[str, object] = {}


async def _authz(request: Request) -> Response:
    body = await request.body()
    _last_auth_request.clear()
    _last_auth_request.update(
        path=request.url.path,
        query=request.url.query,
        method=request.method,
        body=body.decode("latin-1"),
        headers=dict(request.headers),
    )
    return _answer(request.headers.get("x-test-auth", ""), request)


def _answer(mode: str, request: Request) -> Response:
    if mode == "ok":
        return Response(b"", headers=ALICE)
    if mode == "anonymous":
        return Response(b"", headers={name: "" for name in IDENTITY_HEADERS})
    if mode == "no-identity-headers":
        return Response(b"")
    if mode == "deny":
        return Response(b"denied by policy", status_code=403)
    if mode == "relative":
        return Response(b"", status_code=401, headers={"Location": "/login?rd=%2Forders"})
    if mode == "redirect":  # what nginx must never get
        return Response(b"", status_code=302, headers={"Location": PORTAL})
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse(
            {"error": "insufficient_user_authentication", "challenge": "/step-up/c1"},
            status_code=401,
            headers={"WWW-Authenticate": CHALLENGE},
        )
    if request.url.path.endswith("/auth-request"):
        return Response(b"", status_code=401, headers={"Location": PORTAL})
    return Response(b"", status_code=302, headers={"Location": PORTAL})


async def _last(request: Request) -> Response:
    return JSONResponse(_last_auth_request)


async def _portal(request: Request) -> Response:
    return JSONResponse({"portal": request.url.path, "headers": dict(request.headers)})


stand_in_app = Starlette(
    routes=[
        Route("/api/authz/auth-request", _authz),
        Route("/api/authz/forward-auth", _authz),
        Route("/_test/last", _last),
        Route("/{path:path}", _portal, methods=["GET", "POST"]),
    ]
)

# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    workdir = tmp_path_factory.mktemp("stand-in-auth")
    app = "tests.integration.test_proxy_harness:stand_in_app"
    with UvicornServer(app, workdir, name="stand-in", ready_path="/_test/last") as server:
        yield server


@pytest.fixture(scope="module")
def nginx(
    nginx_binary: str,
    stand_in: UvicornServer,
    upstream_app: UvicornServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Nginx]:
    conf = nginx_conf(
        listen_port=free_port(), stepguard_port=stand_in.port, upstream_port=upstream_app.port
    )
    with Nginx(conf, tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="module")
def caddy(
    caddy_binary: str,
    stand_in: UvicornServer,
    upstream_app: UvicornServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Caddy]:
    text = caddyfile(
        listen_port=free_port(), stepguard_port=stand_in.port, upstream_port=upstream_app.port
    )
    with Caddy(text, tmp_path_factory.mktemp("caddy")) as server:
        yield server


def send(
    proxy: Nginx | Caddy,
    path: str,
    *,
    mode: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    host: str | None = None,
) -> httpx.Response:
    sent = {"Host": host or f"app.test:{proxy.port}", **(headers or {})}
    if mode is not None:
        sent["X-Test-Auth"] = mode
    return CLIENT.request(method, f"{proxy.url}{path}", headers=sent, content=content)


def last_auth_request(stand_in: UvicornServer) -> dict[str, object]:
    return CLIENT.get(f"{stand_in.url}/_test/last").json()


def assert_identity_is_alices(echoed: dict[str, object]) -> None:
    for name, value in ALICE.items():
        assert received_headers(echoed, name) == [value], name


CLIENT = httpx.Client(timeout=10.0, trust_env=False)  # one client: building one costs ~0.1 s
HTML = {"Accept": "text/html,application/xhtml+xml"}
JSON = {"Accept": "application/json"}

# --- nginx auth_request ---------------------------------------------------------------------


def test_nginx_allowed_request_reaches_upstream_with_identity_only_from_stepguard(
    nginx: Nginx, stand_in: UvicornServer
) -> None:
    forged = {**FORGED, "X-Forwarded-For": "203.0.113.9", "X-Original-URL": "http://evil/"}
    response = send(nginx, "/orders/7?view=full", mode="ok", headers=forged)

    assert response.status_code == 200
    echoed = response.json()
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("GET", "/orders/7", "view=full")
    assert_identity_is_alices(echoed)
    auth = last_auth_request(stand_in)
    assert auth["path"] == "/api/authz/auth-request"
    assert auth["headers"]["x-original-url"] == f"http://app.test:{nginx.port}/orders/7?view=full"
    assert auth["headers"]["x-original-method"] == "GET"
    assert auth["headers"]["x-forwarded-for"] == "127.0.0.1"


def test_nginx_auth_subrequest_has_no_body_and_the_upstream_gets_it(
    nginx: Nginx, stand_in: UvicornServer
) -> None:
    response = send(nginx, "/transfers", mode="ok", method="POST", content=b"amount=5000")

    assert response.status_code == 200
    assert (response.json()["method"], response.json()["body"]) == ("POST", "amount=5000")
    auth = last_auth_request(stand_in)
    assert (auth["method"], auth["body"]) == ("GET", "")
    assert auth["headers"]["x-original-method"] == "POST"
    assert "content-length" not in auth["headers"]


def test_nginx_anonymous_answer_sends_no_identity_headers_at_all(nginx: Nginx) -> None:
    response = send(nginx, "/public", mode="anonymous", headers=FORGED)

    assert response.status_code == 200
    for name in IDENTITY_HEADERS:
        assert received_headers(response.json(), name) == [], name


def test_nginx_browser_needing_sign_in_is_redirected_to_stepguards_location(
    nginx: Nginx,
) -> None:
    response = send(nginx, "/orders", headers=HTML)

    assert response.status_code == 302
    assert response.headers["location"] == PORTAL


def test_nginx_relative_location_is_made_absolute_on_this_host(nginx: Nginx) -> None:
    response = send(nginx, "/orders", mode="relative", headers=HTML)

    assert response.status_code == 302
    assert response.headers["location"] == f"http://app.test:{nginx.port}/login?rd=%2Forders"


@pytest.mark.parametrize("path", ["/api/orders", "/orders"])
def test_nginx_api_client_gets_the_401_with_www_authenticate_intact(
    nginx: Nginx, path: str
) -> None:
    response = send(nginx, path, headers=JSON)

    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == [CHALLENGE]
    assert "location" not in response.headers


def test_nginx_passes_a_403_on(nginx: Nginx) -> None:
    assert send(nginx, "/admin-tools", mode="deny").status_code == 403


def test_nginx_turns_a_redirect_from_the_auth_endpoint_into_500(nginx: Nginx) -> None:
    response = send(nginx, "/orders", mode="redirect", headers=HTML)

    assert response.status_code == 500
    assert "auth request unexpected status: 302" in nginx.error_log()


@pytest.mark.parametrize("path", ["/login?rd=%2F", "/step-up/c1", "/account/factors", "/admin"])
def test_nginx_portal_paths_reach_stepguard_without_an_auth_check(
    nginx: Nginx, path: str
) -> None:
    response = send(nginx, path, headers={**HTML, **FORGED, "X-Forwarded-Host": "evil.test"})

    assert response.status_code == 200
    portal = response.json()
    assert portal["portal"] == path.split("?")[0]
    assert portal["headers"]["x-forwarded-host"] == f"app.test:{nginx.port}"
    seen = {name.replace("_", "-") for name in portal["headers"]}
    assert not seen & {name.lower() for name in IDENTITY_HEADERS}


def test_nginx_paths_that_only_start_like_portal_paths_are_protected(nginx: Nginx) -> None:
    assert send(nginx, "/administrator", headers=HTML).status_code == 302
    assert send(nginx, "/loginhelp", mode="ok").json()["path"] == "/loginhelp"


def test_nginx_refuses_another_host_name(nginx: Nginx) -> None:
    assert send(nginx, "/orders", mode="ok", host="evil.test").status_code == 421


def test_nginx_fails_closed_when_stepguard_is_down(
    nginx_binary: str, upstream_app: UvicornServer, tmp_path: Path
) -> None:
    conf = nginx_conf(
        listen_port=free_port(), stepguard_port=free_port(), upstream_port=upstream_app.port
    )
    with Nginx(conf, tmp_path) as proxy:
        assert send(proxy, "/orders", mode="ok").status_code == 500


# --- Caddy forward_auth ---------------------------------------------------------------------


def test_caddy_allowed_request_reaches_upstream_with_identity_only_from_stepguard(
    caddy: Caddy, stand_in: UvicornServer
) -> None:
    forged = {**FORGED, "X-Forwarded-Uri": "/evil", "X-Forwarded-Method": "DELETE"}
    response = send(caddy, "/orders/7?view=full", mode="ok", method="POST", headers=forged)

    assert response.status_code == 200
    echoed = response.json()
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("POST", "/orders/7", "view=full")
    assert_identity_is_alices(echoed)
    assert received_headers(echoed, "X-Forwarded-Uri") == []
    auth = last_auth_request(stand_in)
    assert (auth["method"], auth["path"]) == ("GET", "/api/authz/forward-auth")
    assert auth["query"] == "view=full"
    expected = {
        "x-forwarded-method": "POST",
        "x-forwarded-proto": "http",
        "x-forwarded-host": f"app.test:{caddy.port}",
        "x-forwarded-uri": "/orders/7?view=full",
        "x-forwarded-for": "127.0.0.1",
    }
    assert {name: auth["headers"].get(name) for name in expected} == expected


def test_caddy_anonymous_answer_sends_every_identity_header_empty(caddy: Caddy) -> None:
    response = send(caddy, "/public", mode="anonymous", headers=FORGED)

    assert response.status_code == 200
    for name in IDENTITY_HEADERS:
        assert received_headers(response.json(), name) == [""], name


def test_caddy_copies_a_missing_header_as_its_literal_placeholder(caddy: Caddy) -> None:
    response = send(caddy, "/public", mode="no-identity-headers")

    assert received_headers(response.json(), "Remote-User") == [
        "{http.reverse_proxy.header.Remote-User}"
    ]


def test_caddy_passes_stepguards_redirect_on_unchanged(caddy: Caddy) -> None:
    response = send(caddy, "/orders", headers=HTML)

    assert response.status_code == 302
    assert response.headers["location"] == PORTAL


def test_caddy_passes_the_401_on_with_its_challenge_and_body(caddy: Caddy) -> None:
    response = send(caddy, "/api/orders", headers=JSON)

    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == [CHALLENGE]
    assert response.json()["challenge"] == "/step-up/c1"


def test_caddy_passes_a_403_on_with_its_body(caddy: Caddy) -> None:
    response = send(caddy, "/admin-tools", mode="deny")

    assert (response.status_code, response.text) == (403, "denied by policy")


@pytest.mark.parametrize("path", ["/login?rd=%2F", "/step-up/c1", "/account/factors", "/admin"])
def test_caddy_portal_paths_reach_stepguard_without_client_identity_headers(
    caddy: Caddy, path: str
) -> None:
    response = send(caddy, path, headers={**HTML, **FORGED})

    assert response.status_code == 200
    portal = response.json()
    assert portal["portal"] == path.split("?")[0]
    seen = {name.replace("_", "-") for name in portal["headers"]}
    assert not seen & {name.lower() for name in IDENTITY_HEADERS}


def test_caddy_fails_closed_when_stepguard_is_down(
    caddy_binary: str, upstream_app: UvicornServer, tmp_path: Path
) -> None:
    text = caddyfile(
        listen_port=free_port(), stepguard_port=free_port(), upstream_port=upstream_app.port
    )
    with Caddy(text, tmp_path) as proxy:
        assert send(proxy, "/orders", mode="ok").status_code == 502


# --- the docs show the tested files ---------------------------------------------------------


@pytest.mark.parametrize(
    "config", ["nginx/stepguard.conf", "caddy/Caddyfile", "traefik/stepguard.yml"]
)
def test_docs_include_each_deploy_file_verbatim(config: str) -> None:
    docs = (REPO_ROOT / "docs" / "proxies.md").read_text()

    assert (DEPLOY_DIR / config).read_text().rstrip("\n") + "\n```" in docs
