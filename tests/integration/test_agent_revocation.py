"""Agent tokens die with the user's other credentials (SECURITY.md case 12): a new password,
disabling the user, and ending all sessions (the account page's "Sign out everywhere" and the
operator's `stepguard users end-sessions`) revoke every agent token of the user — on the very
next request at the MCP door, also when the door holds a warm copy of the agent's state — and
re-enabling the user does not bring them back. Ending one browser session leaves agents alone.

The door's upstream is unreachable on purpose: a live token gets past authentication to a 502,
a dead one stops at the 401, and nothing else is needed to tell them apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from stepguard.cli.main import app as cli
from stepguard.gateway import create_app
from stepguard.service.accounts import Accounts
from stepguard.service.agent_tokens import AgentTokens
from stepguard.service.runtime import Runtime
from tests.integration.test_gateway import csrf, sign_in
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user
from tests.support.servers import free_port

INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "t", "version": "1"}}})


@dataclass
class Env:
    runtime: Runtime
    clock: Clock
    alice: Seeded
    bob: Seeded
    folder: Path

    def client(self) -> TestClient:
        return TestClient(create_app(self.runtime), base_url="http://localhost:9091",
                          follow_redirects=False)

    def token(self, user: Seeded, name: str = "agent") -> str:
        return AgentTokens(self.runtime).create(user.user.id, name, ttl=3600).token

    def live(self, user: Seeded) -> int:
        now = self.runtime.now()
        return sum(r.live(now) for r in self.runtime.store.agent_tokens.for_user(user.user.id))


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    clock = Clock()
    extra = f'mcp_servers: [{{name: bank, url: "http://127.0.0.1:{free_port()}/mcp"}}]\n'
    runtime = make_runtime(tmp_path, extra=extra, clock=clock)
    yield Env(runtime, clock, seed_user(runtime), seed_user(runtime, "bob"), tmp_path)
    runtime.close()


def door(client: TestClient, token: str) -> int:
    """The status of an `initialize` at the door: 401 for a dead token, 502 for a live one
    (the upstream is unreachable)."""
    return client.post("/mcp/bank", content=INIT, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream"}).status_code


def test_a_new_password_revokes_every_agent_token_of_the_user(env: Env) -> None:
    token, other, bobs = env.token(env.alice), env.token(env.alice, "second"), env.token(env.bob)
    with env.client() as client:
        assert door(client, token) == 502 and door(client, other) == 502  # warm copies
        Accounts(env.runtime).set_password(env.alice.user.id, "a brand new passphrase")
        assert door(client, token) == 401 and door(client, other) == 401
        assert door(client, bobs) == 502
    assert env.live(env.alice) == 0 and env.live(env.bob) == 1


def test_disabling_the_user_revokes_agent_tokens_for_good(env: Env) -> None:
    token = env.token(env.alice)
    with env.client() as client:
        assert door(client, token) == 502
        Accounts(env.runtime).disable_user(env.alice.user.id, by="admin")
        assert door(client, token) == 401
        env.runtime.store.users.set_disabled(env.alice.user.id, False, now=env.runtime.now())
        assert door(client, token) == 401  # re-enabling the user does not revive the token
    assert env.live(env.alice) == 0


def test_sign_out_everywhere_ends_other_sessions_and_agent_tokens(env: Env) -> None:
    token, bobs = env.token(env.alice), env.token(env.bob)
    with env.client() as client, env.client() as elsewhere:
        sign_in(client, env.alice)
        sign_in(elsewhere, env.alice)
        assert door(client, token) == 502
        page = client.get("/account")
        assert page.status_code == 200 and "/account/sessions/end-all" in page.text
        done = client.post("/account/sessions/end-all", data={"csrf_token": csrf(page.text)})
        assert done.status_code == 303
        assert door(client, token) == 401 and door(client, bobs) == 502
        assert client.get("/account").status_code == 200  # this browser stays signed in
        assert elsewhere.get("/account").status_code == 303  # the other one is signed out
    assert env.live(env.alice) == 0


def test_sign_out_everywhere_refuses_a_forged_form(env: Env) -> None:
    token = env.token(env.alice)
    with env.client() as client:
        sign_in(client, env.alice)
        forged = client.post("/account/sessions/end-all", data={"csrf_token": "forged"})
        assert forged.status_code == 403
        assert door(client, token) == 502
    assert env.live(env.alice) == 1


def test_the_operator_ends_all_sessions_and_agent_tokens_from_the_cli(env: Env) -> None:
    token = env.token(env.alice)
    with env.client() as client:
        sign_in(client, env.alice)
        assert door(client, token) == 502
        result = CliRunner().invoke(cli, ["users", "end-sessions", "alice", "--yes", "-c",
                                          str(env.folder / "stepguard.yaml")])
        assert result.exit_code == 0, result.output
        assert "ended 1 session(s)" in result.output and "1 agent token" in result.output
        assert door(client, token) == 401  # another process's revocation, the next request
        assert client.get("/account").status_code == 303


def test_ending_one_browser_session_leaves_agents_alone(env: Env) -> None:
    token = env.token(env.alice)
    with env.client() as client:
        sign_in(client, env.alice)
        page = client.get("/account")
        client.post("/logout", data={"csrf_token": csrf(page.text)})
        assert door(client, token) == 502
    assert env.live(env.alice) == 1


def test_revocations_are_audited_with_their_count(env: Env) -> None:
    env.token(env.alice)
    env.token(env.alice, "second")
    Accounts(env.runtime).set_password(env.alice.user.id, "a brand new passphrase")
    env.runtime.audit.flush(10)
    entry = next(e for e in env.runtime.audit_log.entries(kind="admin")
                 if e.outcome == "password_set")
    assert entry.detail["agents_revoked"] == 2
    created = [e for e in env.runtime.audit_log.entries(kind="admin")
               if e.outcome == "agent_token_created"]
    assert len(created) == 2 and all(len(e.detail["agent"]) == 16 for e in created)
