"""`stepguard.asgi`: the middleware (embedded and remote) and the `require_step_up` dependency."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

import stepguard.asgi as asgi
from stepguard.asgi import (
    RemoteDecider,
    StepguardMiddleware,
    StepguardState,
    from_json,
    require_step_up,
    step_up_exception_handler,
)
from stepguard.asgi.dependency import StepUpRequired
from stepguard.core.errors import StoreUnavailable
from stepguard.core.levels import Level
from tests.integration.test_decision_api import Env, gateway_app, make_env, open_session, pass_totp

HTML = {"Accept": "text/html"}
API = {"Accept": "application/json"}


async def echo(request: Request) -> Response:
    state: StepguardState | None = getattr(request.state, "stepguard", None)
    return JSONResponse({
        "headers": {k: v for k, v in request.headers.items()},
        "level": state.level if state else None, "amr": list(state.amr) if state else None,
        "auth_time": state.auth_time if state else None,
        "user": state.subject.username if state and state.subject else None,
        "grant": [state.grant.id, state.grant.consumed] if state and state.grant else None})


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    env = make_env(tmp_path)
    yield env
    env.runtime.close()


@pytest.fixture()
def embedded(env: Env) -> Iterator[TestClient]:
    app = StepguardMiddleware(starlette_app(), mode="embedded", runtime=env.runtime)
    with TestClient(app, base_url="http://app.test", follow_redirects=False) as client:
        yield client


def test_public_api_is_curated() -> None:
    assert sorted(asgi.__all__) == sorted(
        name for name in dir(asgi) if not name.startswith("_") and name not in
        ("annotations", "dependency", "middleware", "remote"))


def test_anonymous_browser_is_redirected_and_api_client_gets_rfc9470(embedded: TestClient) -> None:
    browser = embedded.get("/dashboard", headers=HTML)
    assert browser.status_code == 303
    assert browser.headers["location"].startswith("http://localhost:9091/login?rd=")
    api = embedded.get("/dashboard", headers=API)
    assert api.status_code == 401
    challenge = api.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="urn:stepguard:aal1"' in challenge
    assert api.json()["challenge_url"] == api.headers["location"]


def test_allowed_request_sees_the_state_and_no_forged_identity(env: Env,
                                                               embedded: TestClient) -> None:
    token, _ = open_session(env)
    forged = {"Remote-User": "mallory", "remote_user": "mallory", "Stepguard-Acr": "aal3"}
    response = embedded.get("/dashboard", cookies={"stepguard_session": token},
                            headers={**API, **forged})
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "alice" and body["level"] == "aal1" and body["amr"] == ["pwd"]
    assert body["auth_time"] == int(env.clock.now)
    assert not {"remote-user", "remote_user", "stepguard-acr"} & set(body["headers"])


def test_step_up_then_allowed_with_the_new_level(env: Env, embedded: TestClient) -> None:
    token, session = open_session(env)
    api = embedded.get("/export", cookies={"stepguard_session": token}, headers=API)
    assert api.status_code == 401 and "max_age=900" in api.headers["www-authenticate"]
    browser = embedded.get("/export", cookies={"stepguard_session": token}, headers=HTML)
    assert browser.status_code == 303 and "/step-up/" in browser.headers["location"]
    passed = pass_totp(env, browser.headers["location"], session)
    after = embedded.get("/export", cookies={"stepguard_session": passed.token}, headers=API)
    assert after.status_code == 200 and after.json()["level"] == "aal2"


def test_deny_is_403_and_an_ambiguous_path_is_400(env: Env, embedded: TestClient) -> None:
    token, _ = open_session(env, level=Level.AAL2)
    assert embedded.get("/blocked/x", cookies={"stepguard_session": token}).status_code == 403
    assert embedded.get("/public/%2e%2e/blocked/x").status_code == 400
    assert embedded.get("/blocked%2Fx").status_code == 400


def test_the_portal_is_served_at_its_standard_paths(embedded: TestClient) -> None:
    login = embedded.get("/login", headers=HTML)
    assert login.status_code == 200 and 'name="csrf_token"' in login.text
    assert embedded.get("/static/stepguard.css").status_code == 200


@pytest.mark.parametrize("failure", [StoreUnavailable("down"), RuntimeError("bug")])
def test_any_failure_is_a_503_never_an_allow(env: Env, embedded: TestClient,
                                             monkeypatch: pytest.MonkeyPatch,
                                             failure: Exception) -> None:
    token, _ = open_session(env)

    def broken(*_: object, **__: object) -> None:
        raise failure

    monkeypatch.setattr(env.runtime.store.session_states, "read", broken)
    response = embedded.get("/dashboard", cookies={"stepguard_session": token}, headers=API)
    assert response.status_code == 503 and "headers" not in response.text


def test_mode_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="runtime"):
        StepguardMiddleware(starlette_app(), mode="embedded")
    with pytest.raises(ValueError, match="RemoteDecider"):
        StepguardMiddleware(starlette_app(), mode="remote")


# ------------------------------------------------------------------------------------ remote


def remote_client(env: Env, transport: httpx.AsyncBaseTransport, *, key: str | None = None,
                  timeout: float = 0.5) -> TestClient:
    decider = RemoteDecider("http://stepguard.test", key or env.api_key, timeout=timeout,
                            transport=transport)
    app = StepguardMiddleware(starlette_app(), mode="remote", remote=decider)
    return TestClient(app, base_url="http://app.test", follow_redirects=False)


def test_remote_mode_decides_through_the_decision_api(env: Env) -> None:
    transport = httpx.ASGITransport(app=gateway_app(env.runtime))
    token, _ = open_session(env)
    with remote_client(env, transport) as client:
        allowed = client.get("/dashboard", cookies={"stepguard_session": token}, headers=API)
        assert allowed.status_code == 200 and allowed.json()["user"] == "alice"
        stepped = client.get("/export", cookies={"stepguard_session": token}, headers=HTML)
        assert stepped.status_code == 303 and "/step-up/" in stepped.headers["location"]
        assert client.get("/blocked%2Fx").status_code == 400


class SlowTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"decision": "allow"})


class FixedTransport(httpx.AsyncBaseTransport):
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(self.status, content=json.dumps(self.body).encode())


@pytest.mark.parametrize("transport", [
    SlowTransport(),
    FixedTransport(500, {"error": "boom"}),
    FixedTransport(200, {"decision": "allow"}),  # does not match the schema
    FixedTransport(401, {"error": "invalid_api_key"}),
    httpx.AsyncHTTPTransport(retries=0),  # nothing listens on stepguard.test
], ids=["timeout", "5xx", "malformed", "bad-key", "unreachable"])
def test_remote_failures_fail_closed(env: Env, transport: httpx.AsyncBaseTransport) -> None:
    with remote_client(env, transport, timeout=0.2) as client:
        started = time.perf_counter()
        response = client.get("/dashboard", headers=API)
        assert response.status_code == 503
        assert time.perf_counter() - started < 1.5  # the deadline holds, whatever the transport


def test_remote_wrong_api_key_fails_closed(env: Env) -> None:
    transport = httpx.ASGITransport(app=gateway_app(env.runtime))
    token, _ = open_session(env)
    with remote_client(env, transport, key="sgk_0000000000000000_" + "x" * 43) as client:
        assert client.get("/", cookies={"stepguard_session": token}).status_code == 503


# ------------------------------------------------------------------------------------ dependency


class TransferIn(BaseModel):
    amount: float
    payee: str


def fastapi_app(env: Env) -> Any:
    app = FastAPI()
    app.add_exception_handler(StepUpRequired, step_up_exception_handler)
    guard = require_step_up("payments.transfer", amount=from_json("amount"),
                            payee=from_json("payee"))

    @app.post("/transfers")
    async def transfer(body: TransferIn, state: StepguardState = Depends(guard)) -> dict[str, Any]:
        return {"sent": body.amount, "to": body.payee, "level": state.level,
                "grant": [state.grant.id, state.grant.consumed] if state.grant else None}

    @app.post("/transfers/inline")
    async def inline(body: TransferIn, request: Request) -> dict[str, Any]:
        state = await guard.check(request, amount=body.amount, payee=body.payee)
        return {"sent": body.amount, "level": state.level}

    return StepguardMiddleware(app, mode="embedded", runtime=env.runtime)


def test_dependency_decides_with_the_values_the_app_knows(env: Env) -> None:
    token, session = open_session(env)
    with TestClient(fastapi_app(env), base_url="http://app.test",
                    follow_redirects=False, cookies={"stepguard_session": token}) as client:
        small = client.post("/transfers", json={"amount": 12, "payee": "Bob"}, headers=API)
        assert small.status_code == 200 and small.json()["grant"] is None
        large = client.post("/transfers", json={"amount": 12000, "payee": "Bob"}, headers=API)
        assert large.status_code == 401
        assert large.json()["bound_values"] == {"amount": "12000", "payee": "Bob"}
        assert 'error="insufficient_user_authentication"' in large.headers["www-authenticate"]
        assert "max_age=0" in large.headers["www-authenticate"]
        browser = client.post("/transfers", json={"amount": 12000, "payee": "Bob"}, headers=HTML)
        assert browser.status_code == 303
        passed = pass_totp(env, browser.headers["location"], session)
        client.cookies.set("stepguard_session", passed.token)
        done = client.post("/transfers", json={"amount": 12000, "payee": "Bob"}, headers=API)
        assert done.status_code == 200 and done.json()["grant"][1] is True
        again = client.post("/transfers", json={"amount": 12000, "payee": "Bob"}, headers=API)
        assert again.status_code == 401  # single use
        inline = client.post("/transfers/inline", json={"amount": 5000, "payee": "Eve"},
                             headers=API)
        assert inline.status_code == 401


def test_dependency_without_the_middleware_refuses() -> None:
    app = FastAPI()

    @app.get("/x")
    async def x(state: StepguardState = Depends(require_step_up("a"))) -> dict[str, str]:
        return {"ok": "yes"}

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/x").status_code == 500
