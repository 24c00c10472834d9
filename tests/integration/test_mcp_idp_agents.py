"""IdP access tokens (JWT) as agent credentials at the MCP door (`adapters.agent_bearer`), in
process in front of the real bank MCP server. The issuer is simulated as in test_bearer.py
(discovery + JWKS on an httpx MockTransport, tokens signed with real keys).

A token for the door's audience stands for the user its issuer + `sub` is linked to (as the
OpenID sign-in links them) as an aal1 agent:
a large transfer is held for alice's bound approval on the portal, and the same client's next
(refreshed) token runs it once. Another client's token, a token for the web API's audience, an
identity linked to no user (a matching username is no link) or a disabled user, a door without
`mcp.audience` — refused or held, never run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from stepguard.adapters import bearer
from stepguard.adapters.agent_bearer import BearerAgents
from stepguard.adapters.bearer import BearerSettings, BearerValidator
from stepguard.core.errors import InvalidToken
from stepguard.gateway import create_app
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime
from stepguard.storage.identity_records import IdentityRecord
from tests.integration import test_mcp_inprocess
from tests.integration.test_bearer import AUDIENCE, ISSUER, T0, Issuer, Key, ec_key, sign
from tests.integration.test_gateway import csrf, sign_in
from tests.integration.test_mcp_inprocess import BANK, INIT
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user
from tests.support.servers import Process

bank = test_mcp_inprocess.bank  # the bank MCP server, one per module
DOOR = "https://stepguard.test/mcp/bank"  # the door's resource URL: its tokens' audience


@dataclass
class Env:
    runtime: Runtime
    client: TestClient
    clock: Clock
    alice: Seeded
    key: Key
    ledger: Path

    def token(self, **claims: Any) -> str:
        values = {"aud": DOOR, "iat": int(self.clock.now) - 5, "exp": int(self.clock.now) + 300,
                  "auth_time": int(self.clock.now) - 5, **claims}
        return sign(self.key, **values)

    def transfers(self, to: str) -> int:
        if not self.ledger.exists():
            return 0
        return sum(1 for line in self.ledger.read_text().splitlines()
                   if json.loads(line).get("to") == to)


def runtime_with(tmp_path: Path, process: Process, clock: Clock, key: Key, *,
                 audience: str = DOOR) -> Runtime:
    extra = (f'mcp_servers: [{{name: bank, url: "http://127.0.0.1:{process.port}/mcp"}}]\n'
             f'bearer: {{issuer: "{ISSUER}", audience: "{AUDIENCE}"}}\n'
             f'mcp: {{audience: "{audience}"}}\n' if audience else
             f'mcp_servers: [{{name: bank, url: "http://127.0.0.1:{process.port}/mcp"}}]\n'
             f'bearer: {{issuer: "{ISSUER}", audience: "{AUDIENCE}"}}\n')
    runtime = make_runtime(tmp_path, policy=(BANK / "policy.yaml").read_text(), extra=extra,
                           clock=clock)
    # the runtime's bearer validator, its JWKS served by the simulated issuer
    settings = BearerSettings.from_config(runtime.config.bearer, runtime.policy)
    bearer._validators[id(runtime)] = BearerValidator(settings, Issuer([key]).jwks(clock),
                                                      now=clock)
    return runtime


@pytest.fixture()
def env(tmp_path: Path, bank: tuple[Process, Path]) -> Iterator[Env]:
    process, ledger = bank
    clock, key = Clock(T0), ec_key()
    runtime = runtime_with(tmp_path, process, clock, key)
    alice = seed_user(runtime)
    link(runtime, "idp-alice", alice.user.id)
    with TestClient(create_app(runtime), base_url="http://localhost:9091",
                    follow_redirects=False) as client:
        yield Env(runtime, client, clock, alice, key, ledger)
    bearer._validators.pop(id(runtime), None)
    runtime.close()


def link(runtime: Runtime, subject: str, user_id: str) -> None:
    """The identity an OpenID sign-in links: the issuer's `sub` to the Stepguard user."""
    runtime.store.identities.link(IdentityRecord(
        issuer=ISSUER, subject=subject, user_id=user_id, provider="corp", created=T0,
        last_login=T0))


def rpc(env: Env, token: str, message: dict[str, Any], session: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    return env.client.post("/mcp/bank", content=json.dumps(message), headers=headers)


def transfer(to: str, amount: int = 5000) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "transfer", "arguments": {"amount": amount, "to": to}}}


def call(env: Env, token: str, message: dict[str, Any]) -> Any:
    """`initialize`, then the message, in one MCP session: the answer's JSON-RPC message."""
    init = rpc(env, token, INIT)
    assert init.status_code == 200, init.text
    answer = rpc(env, token, message, init.headers["mcp-session-id"])
    assert answer.status_code == 200, answer.text
    if answer.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in answer.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return answer.json()


def approve(env: Env, url: str) -> None:
    """alice signs in on the portal and approves with her TOTP code."""
    # the same app, its own cookie jar (not entered: the app's lifespan belongs to env.client)
    browser = TestClient(env.client.app, base_url="http://localhost:9091",
                         follow_redirects=False)
    sign_in(browser, env.alice)
    path = "/" + url.split("/", 3)[3]
    page = browser.get(path)
    assert page.status_code == 200 and "transfer" in page.text
    done = browser.post(f"{path}/totp", data={"code": env.alice.code(env.clock.now),
                                              "csrf_token": csrf(page.text)})
    assert done.status_code == 303, done.text


def held_url(answer: Any) -> str:
    assert answer["error"]["code"] == -32042, answer
    return str(answer["error"]["data"]["elicitations"][0]["url"])


def test_an_idp_agent_is_held_for_the_humans_approval_and_runs_once(env: Env) -> None:
    token = env.token(sub="idp-alice", client_id="desktop", jti="t1")
    assert not call(env, token, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "get_balance", "arguments": {}}})["result"]["isError"]
    url = held_url(call(env, token, transfer("DE-idp")))
    assert env.transfers("DE-idp") == 0
    approve(env, url)
    env.clock.advance(30)  # the client refreshed its access token meanwhile
    refreshed = env.token(sub="idp-alice", client_id="desktop", jti="t2")
    assert not call(env, refreshed, transfer("DE-idp"))["result"]["isError"]
    assert env.transfers("DE-idp") == 1
    held_url(call(env, refreshed, transfer("DE-idp")))  # single use
    assert env.transfers("DE-idp") == 1
    env.runtime.audit.flush(10)
    judged = [e for e in env.runtime.audit_log.entries(kind="decision")
              if e.detail.get("via") == "mcp"]
    assert judged and all(e.detail["agent"].startswith("jwt-") for e in judged)
    assert all(e.subject == env.alice.user.id for e in judged)


def test_another_clients_token_does_not_inherit_the_approval(env: Env) -> None:
    token = env.token(sub="idp-alice", client_id="desktop")
    approve(env, held_url(call(env, token, transfer("DE-other"))))
    other = env.token(sub="idp-alice", client_id="browser-extension")
    held_url(call(env, other, transfer("DE-other")))
    assert env.transfers("DE-other") == 0


def test_a_strong_recent_idp_sign_in_is_not_an_approval(env: Env) -> None:
    token = env.token(sub="idp-alice", client_id="desktop", acr="urn:stepguard:aal3",
                      amr=["hwk", "user"], auth_time=int(env.clock.now))
    held_url(call(env, token, transfer("DE-acr")))
    assert env.transfers("DE-acr") == 0


@pytest.mark.parametrize("claims", [
    {"sub": "alice", "aud": AUDIENCE},  # minted for the web API, not for the door
    {"sub": "alice", "iss": "https://evil.test"},
    {"sub": "mallory"},  # linked to no Stepguard user
    {"sub": "alice"},  # a username is never a link
    {"sub": "alice", "exp": int(T0) - 100},
])
def test_tokens_not_for_the_door_or_its_users_are_refused(env: Env,
                                                          claims: dict[str, Any]) -> None:
    answer = rpc(env, env.token(**claims), transfer("DE-refused"))
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert env.transfers("DE-refused") == 0


def test_a_disabled_user_s_idp_agent_is_refused(env: Env) -> None:
    token = env.token(sub="idp-alice", client_id="desktop")
    assert rpc(env, token, INIT).status_code == 200
    Accounts(env.runtime).disable_user(env.alice.user.id)
    assert rpc(env, token, INIT).status_code == 401


def test_without_a_door_audience_idp_tokens_are_refused(tmp_path: Path,
                                                        bank: tuple[Process, Path]) -> None:
    process, _ = bank
    clock, key = Clock(T0), ec_key()
    runtime = runtime_with(tmp_path, process, clock, key, audience="")
    try:
        seed_user(runtime)
        agents = BearerAgents(runtime)
        assert agents.validator is None
        token = sign(key, aud=DOOR, sub="idp-alice", iat=int(T0) - 5, exp=int(T0) + 300)
        with pytest.raises(InvalidToken, match="not accepted"):
            agents.authenticate(token)
    finally:
        bearer._validators.pop(id(runtime), None)
        runtime.close()
