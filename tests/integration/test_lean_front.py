"""The lean front (issue 10): one session-cookie rule at every door, memoised readings that keep
their answers, raw forward-auth and proxy dispatch that keeps Starlette's behaviour around it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stepguard.adapters.cookies import DeviceCookies, SessionCookie
from stepguard.adapters.http_context import TrustedProxies
from stepguard.adapters.rfc9470 import step_up_challenge
from stepguard.asgi import StepguardMiddleware
from stepguard.core.context import AuthEvent
from stepguard.core.errors import BadRequest
from stepguard.core.levels import Level
from stepguard.gateway import create_app
from stepguard.service.runtime import Runtime, hash_token, new_id, new_token, sign
from stepguard.storage.records import SessionRecord
from tests.support.gateway import make_runtime, seed_user

PEER = ("127.0.0.1", 50000)
CADDY = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.test",
         "X-Forwarded-Uri": "/dashboard", "X-Forwarded-For": "203.0.113.7",
         "Accept": "application/json"}


def signed_in(runtime: Runtime) -> str:
    """A live session's token for a seeded user."""
    user = seed_user(runtime, with_totp=False).user
    token, now = new_token(), time.time()
    runtime.store.sessions.add(SessionRecord(
        id=new_id(), token_hash=hash_token(token), user_id=user.id, created=now, last_seen=now,
        events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=now),)))
    return token


@pytest.fixture(params=["https", "http"])
def scheme_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Runtime]]:
    runtime = make_runtime(tmp_path, clock=time.time,  # type: ignore[arg-type]
                           public_url=f"{request.param}://localhost:9091")
    yield request.param, runtime
    runtime.close()


def accepted_names(scheme: str) -> tuple[list[str], list[str]]:
    """(names read, names ignored) for the session cookie on a portal of that scheme."""
    if scheme == "https":
        return ["__Host-stepguard_session", "__Secure-stepguard_session"], ["stepguard_session"]
    return ["stepguard_session"], ["__Host-stepguard_session", "__Secure-stepguard_session"]


def test_forward_auth_reads_the_session_cookie_by_the_portals_names(scheme_runtime) -> None:  # type: ignore[no-untyped-def]
    """On https a plain `stepguard_session` could be tossed in by a sibling subdomain or plain
    http: only the prefixed names the portal sets there count (the old code read it first)."""
    scheme, runtime = scheme_runtime
    token = signed_in(runtime)
    read, ignored = accepted_names(scheme)
    with TestClient(create_app(runtime), base_url="http://localhost:9091", client=PEER) as client:
        for name in read:
            answer = client.get("/api/authz/forward-auth",
                                headers={**CADDY, "Cookie": f"{name}={token}"})
            assert answer.status_code == 200 and answer.headers["remote-user"] == "alice", name
        for name in ignored:
            answer = client.get("/api/authz/forward-auth",
                                headers={**CADDY, "Cookie": f"{name}={token}"})
            assert answer.headers.get("remote-user", "") == "", name


def test_middleware_reads_the_session_cookie_by_the_portals_names(scheme_runtime) -> None:  # type: ignore[no-untyped-def]
    scheme, runtime = scheme_runtime
    token = signed_in(runtime)
    read, ignored = accepted_names(scheme)

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    guarded = StepguardMiddleware(app, mode="embedded", runtime=runtime, portal=False)
    with TestClient(guarded, base_url="http://app.test", client=PEER) as client:
        headers = {"Accept": "application/json"}
        for name in read:
            client.cookies.clear()
            client.cookies.set(name, token)
            assert client.get("/dashboard", headers=headers).status_code == 200, name
        for name in ignored:
            client.cookies.clear()
            client.cookies.set(name, token)
            assert client.get("/dashboard", headers=headers).status_code == 401, name


def test_session_cookie_names_when_the_portal_scheme_is_unknown() -> None:
    cookie = SessionCookie("sg", https=None)  # the middleware in remote mode
    assert cookie.names == ("__Host-sg", "__Secure-sg", "sg")
    assert cookie.token({"sg": "plain", "__Secure-sg": "secure"}) == "secure"


def test_memoised_client_ip_refuses_garbage_every_time() -> None:
    proxies = TrustedProxies.parse(["127.0.0.1/32"])
    for _ in range(3):  # the refusal is remembered, and raised again each time
        with pytest.raises(BadRequest):
            proxies.client_ip("127.0.0.1", "198.51.100.9, <script>")
    assert proxies.client_ip("127.0.0.1", "198.51.100.9") == "198.51.100.9"
    assert proxies.client_ip("203.0.113.5", "198.51.100.9") == "203.0.113.5"  # untrusted peer
    assert proxies.trusts("127.0.0.1") and not proxies.trusts("127.0.0.2")


def test_memoised_device_cookie_checks_keep_their_answers() -> None:
    key, other = b"k" * 32, b"o" * 32
    devices = DeviceCookies(key, size=2)
    genuine, forged = sign(key, "device-1"), sign(other, "device-1")
    for _ in range(2):
        assert devices.device_id(genuine) == "device-1"
        assert devices.device_id(forged) == ""
    for n in range(5):  # evictions: still the right answers
        assert devices.device_id(sign(key, f"d{n}")) == f"d{n}"
    assert devices.device_id(genuine) == "device-1" and devices.device_id(forged) == ""
    assert devices.device_id(sign(key, "x" * 300)) == ""  # longer than any cookie we set


def test_raw_forward_auth_keeps_method_rules_and_stays_minimal(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    try:
        with TestClient(create_app(runtime), base_url="http://localhost:9091",
                        client=PEER) as client:
            answer = client.get("/api/authz/forward-auth", headers=CADDY)
            assert answer.status_code == 401  # anonymous API client: RFC 9470
            assert "content-security-policy" not in answer.headers  # no page headers
            assert client.post("/api/authz/auth-request").status_code == 405
            assert client.request("TRACE", "/api/authz/forward-auth").status_code == 405
            untrusted = TestClient(create_app(runtime), client=("203.0.113.9", 1))
            assert untrusted.get("/api/authz/forward-auth", headers=CADDY).status_code == 403
            page = client.get("/login")
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    finally:
        runtime.close()


def test_one_rendering_of_the_step_up_challenge() -> None:
    header = step_up_challenge(['say "hi"\r\nX-Evil: 1'], acr_values="urn:a", max_age=30.7)
    assert header == ('Bearer error="insufficient_user_authentication", '
                      'error_description="say hiX-Evil: 1", acr_values="urn:a", max_age=30')


@pytest.mark.parametrize("value", [b"v\r\nx-evil: 1", b"v\nx-evil: 1", b"v\rx", b"v\0x"])
def test_a_relayed_header_with_a_line_break_is_never_written(value: bytes) -> None:
    from stepguard.adapters.relay import UpstreamError, _head, _Pool

    with pytest.raises(UpstreamError):
        _head("GET", "/", _Pool("app.test", 80, None), [(b"remote-email", value)], b"")


def test_a_silent_upstream_is_an_upstream_error_after_the_timeout() -> None:
    import asyncio

    from stepguard.adapters.relay import Relay, UpstreamError

    async def scenario() -> float:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            await asyncio.sleep(5)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        relay, start = Relay(timeout=0.2), time.monotonic()
        try:
            with pytest.raises(UpstreamError):
                await relay.send(f"http://127.0.0.1:{port}", "GET", "/", [], b"")
            return time.monotonic() - start
        finally:
            server.close()

    assert asyncio.run(scenario()) < 2.0
