"""A step-up's challenge is begun by the flow that decides, before the answer is rendered, at
every door that opens one (forward-auth, reverse proxy, decision API, ASGI middleware): the
renderers only translate a decision and the place it continues into their protocol."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from stepguard.adapters.decision_api import DecisionService
from stepguard.adapters.forward_auth import ForwardAuth
from stepguard.adapters.proxy import ReverseProxy
from stepguard.asgi import StepguardMiddleware
from stepguard.core.context import AuthEvent
from stepguard.core.levels import Level
from stepguard.gateway import create_app
from stepguard.service.runtime import Runtime, hash_token, new_id, new_token
from stepguard.storage.records import SessionRecord
from tests.support.gateway import make_runtime, seed_user

PEER = ("127.0.0.1", 50000)
ADMIN = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http",
         "X-Forwarded-Host": "app.test", "X-Forwarded-Uri": "/admin/users",
         "Accept": "application/json"}


def signed_in(runtime: Runtime) -> str:
    """A live aal1 session (a password only): the admin pages ask it to step up."""
    user = seed_user(runtime, with_totp=False).user
    token, now = new_token(), time.time()
    runtime.store.sessions.add(SessionRecord(
        id=new_id(), token_hash=hash_token(token), user_id=user.id, created=now, last_seen=now,
        events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=now),)))
    return token


@pytest.fixture
def steps() -> list[str]:
    """What happened, in order: a challenge stored, a renderer entered and left."""
    return []


def observe(monkeypatch: pytest.MonkeyPatch, runtime: Runtime, steps: list[str],
            owner: type, renderer: str) -> None:
    challenges = runtime.store.challenges
    add = challenges.add

    def stored(record: Any) -> None:
        steps.append("stored")
        add(record)

    monkeypatch.setattr(challenges, "add", stored)
    render = getattr(owner, renderer)

    def rendering(*args: Any, **kwargs: Any) -> Any:
        steps.append("render")
        answer = render(*args, **kwargs)
        steps.append("rendered")
        return answer

    monkeypatch.setattr(owner, renderer, rendering)


def test_forward_auth_begins_the_challenge_before_rendering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[str]) -> None:
    runtime = make_runtime(tmp_path, clock=time.time)  # type: ignore[arg-type]
    try:
        token = signed_in(runtime)
        observe(monkeypatch, runtime, steps, ForwardAuth, "_answer")
        with TestClient(create_app(runtime), base_url="http://localhost:9091",
                        client=PEER) as client:
            answer = client.get("/api/authz/forward-auth",
                                headers={**ADMIN, "Cookie": f"stepguard_session={token}"})
        assert answer.status_code == 401
        assert "/step-up/" in answer.json()["challenge_url"]
        assert steps == ["stored", "render", "rendered"]
    finally:
        runtime.close()


def test_the_decision_api_and_the_middleware_begin_it_before_rendering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[str]) -> None:
    runtime = make_runtime(tmp_path, clock=time.time)  # type: ignore[arg-type]
    try:
        token = signed_in(runtime)
        observe(monkeypatch, runtime, steps, DecisionService, "answer")

        async def ok(_: Any) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/{path:path}", ok)])
        guarded = StepguardMiddleware(app, mode="embedded", runtime=runtime, portal=False)
        with TestClient(guarded, base_url="http://app.test") as client:
            answer = client.get("/admin/users", headers={
                "Accept": "application/json", "Cookie": f"stepguard_session={token}"})
        assert answer.status_code == 401 and "/step-up/" in answer.json()["challenge_url"]
        assert steps == ["stored", "render", "rendered"]
    finally:
        runtime.close()


def test_the_reverse_proxy_begins_it_before_rendering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[str]) -> None:
    extra = 'upstreams:\n  - host: "*"\n    url: "http://127.0.0.1:9"\n'
    runtime = make_runtime(tmp_path, clock=time.time, extra=extra)  # type: ignore[arg-type]
    try:
        token = signed_in(runtime)
        observe(monkeypatch, runtime, steps, ReverseProxy, "_step_up_answer")
        with TestClient(create_app(runtime), base_url="http://localhost:9091",
                        follow_redirects=False) as client:
            answer = client.get("/admin/users", headers={
                "Accept": "text/html", "Cookie": f"stepguard_session={token}"})
        assert answer.status_code == 302 and answer.headers["location"].startswith("/step-up/")
        assert steps == ["stored", "render", "rendered"]
    finally:
        runtime.close()
