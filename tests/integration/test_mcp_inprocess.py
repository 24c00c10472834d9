"""The MCP door in process (Starlette's TestClient) in front of a real bank MCP server: a dead
store fails closed, every judged call is audited with its digest and redacted arguments, and
the account page creates (after a fresh proof) and revokes agent tokens."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stepguard.core.errors import StoreUnavailable
from stepguard.gateway import create_app
from stepguard.service.agent_tokens import AgentTokens
from stepguard.service.guard import STORE_CONTACT_EVERY
from tests.support.gateway import Clock, make_runtime, seed_user
from tests.support.servers import REPO_ROOT, Process, free_port, python_env

BANK = REPO_ROOT / "examples" / "mcp_bank"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Path]]:
    workdir = tmp_path_factory.mktemp("bank")
    ledger = workdir / "ledger.jsonl"
    port = free_port()
    with Process([sys.executable, str(BANK / "bank.py"), "http", str(port)], port=port,
                 workdir=workdir, name="bank", env=python_env({"BANK_LEDGER": str(ledger)}),
                 ready_path="/") as process:
        yield process, ledger


@pytest.fixture()
def env(tmp_path: Path, bank: tuple[Process, Path]):  # type: ignore[no-untyped-def]
    process, _ = bank
    extra = f'mcp_servers: [{{name: bank, url: "http://127.0.0.1:{process.port}/mcp"}}]\n' \
            "mcp: {redact: [to]}\n"
    runtime = make_runtime(tmp_path, policy=(BANK / "policy.yaml").read_text(), extra=extra,
                           clock=Clock())
    alice = seed_user(runtime)
    token = AgentTokens(runtime).create(alice.user.id, "agent", ttl=3600).token
    with TestClient(create_app(runtime), base_url="http://localhost:9091") as client:
        yield runtime, client, token, alice
    runtime.close()


def rpc(client: TestClient, token: str, message: dict[str, object], session: str = ""):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    return client.post("/mcp/bank", content=json.dumps(message), headers=headers)


def transfer(amount: int) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "transfer", "arguments": {"amount": amount, "to": "DE-audit"}}}


def test_a_dead_store_never_runs_a_call(env, bank, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    runtime, client, token, _ = env
    _, ledger = bank
    before = ledger.read_text() if ledger.exists() else ""
    session = rpc(client, token, INIT).headers["mcp-session-id"]

    def down(*_a: object, **_k: object) -> object:
        raise StoreUnavailable("down")

    monkeypatch.setattr(runtime.store.grants, "active_for_session", down)
    # a warm copy of the agent's state is used at most STORE_CONTACT_EVERY after a read
    runtime.clock.advance(STORE_CONTACT_EVERY)
    answer = rpc(client, token, transfer(50), session)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == -32603
    monkeypatch.setattr(runtime.store.agent_tokens, "get", down)
    assert rpc(client, token, transfer(50), session).status_code == 503
    assert (ledger.read_text() if ledger.exists() else "") == before


def test_every_judged_call_is_audited_with_digest_and_redacted_arguments(env) -> None:  # type: ignore[no-untyped-def]
    runtime, client, token, alice = env
    session = rpc(client, token, INIT).headers["mcp-session-id"]
    assert rpc(client, token, transfer(5), session).status_code == 200
    held = rpc(client, token, transfer(5000), session).json()
    assert held["error"]["code"] == -32042
    runtime.audit.flush(10)
    entries = [e for e in runtime.audit_log.entries(kind="decision")
               if e.detail.get("via") == "mcp"]
    assert [e.decision for e in entries] == ["allow", "step_up"]
    agent = token.split("_")[1]
    for entry in entries:
        assert entry.subject == alice.user.id
        assert entry.detail["agent"] == agent  # which token made the call (its public id)
        assert entry.detail["arguments"]["to"] == "[redacted]"
        assert len(entry.detail["call_digest"]) == 64
        assert "DE-audit" not in json.dumps(dict(entry.detail))
    assert entries[1].detail["binding"] == entries[1].detail["call_digest"]


def test_agent_tokens_are_created_after_a_fresh_proof_and_revoked_on_the_account_page(env) -> None:  # type: ignore[no-untyped-def]
    runtime, client, token, alice = env
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    client.post("/login", data={"username": "alice", "password": alice.password,
                                "csrf_token": csrf}, follow_redirects=False)
    page = client.get("/account/agents")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    first = client.post("/account/agents", data={"name": "laptop", "csrf_token": csrf},
                        follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/step-up/")
    step = client.get(first.headers["location"])
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', step.text).group(1)  # type: ignore[union-attr]
    client.post(first.headers["location"] + "/totp",
                data={"code": alice.code(runtime.now()), "csrf_token": csrf})
    page = client.get("/account/agents")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    made = client.post("/account/agents", data={"name": "laptop", "csrf_token": csrf})
    new = re.search(r"<code>(sga_[^<]+)</code>", made.text).group(1)  # type: ignore[union-attr]
    assert rpc(client, new, INIT).status_code == 200
    record = next(r for r in AgentTokens(runtime).for_user(alice.user.id) if r.name == "laptop")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', made.text).group(1)  # type: ignore[union-attr]
    client.post("/account/agents/revoke", data={"token_id": record.id, "csrf_token": csrf})
    assert rpc(client, new, INIT).status_code == 401  # the very next request
    assert rpc(client, token, INIT).status_code == 200  # the other agent keeps working


def test_redaction_reaches_into_lists_of_arguments(env) -> None:  # type: ignore[no-untyped-def]
    """A secret inside a list (a batch of payees) is redacted in the ledger like a top-level one."""
    runtime, client, token, _ = env
    session = rpc(client, token, INIT).headers["mcp-session-id"]
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "transfer", "arguments": {
                "amount": 5, "to": "DE-audit",
                "batch": [{"to": "DE-hidden", "amount": 1}, "plain"]}}}
    assert rpc(client, token, call, session).status_code == 200
    runtime.audit.flush(10)
    entry = [e for e in runtime.audit_log.entries(kind="decision")
             if e.detail.get("via") == "mcp"][-1]
    assert entry.detail["arguments"]["batch"] == [{"to": "[redacted]", "amount": 1}, "plain"]
    assert "DE-hidden" not in json.dumps(dict(entry.detail))


def test_a_call_too_large_to_hold_for_approval_is_refused_and_not_run(env, bank) -> None:  # type: ignore[no-untyped-def]
    runtime, client, token, _ = env
    _, ledger = bank
    before = ledger.read_text() if ledger.exists() else ""
    session = rpc(client, token, INIT).headers["mcp-session-id"]
    limit = runtime.config.challenge.held_body_limit
    answer = rpc(client, token, transfer(5000) | {"params": {
        "name": "transfer", "arguments": {"amount": 5000, "to": "DE-" + "9" * limit}}}, session)
    assert answer.status_code == 200
    result = answer.json()["result"]
    assert result["isError"] is True and "too large" in result["content"][0]["text"]
    assert (ledger.read_text() if ledger.exists() else "") == before


def test_a_held_call_that_is_never_approved_ends_as_a_tool_error_in_time(
        tmp_path: Path, bank: tuple[Process, Path]) -> None:
    process, ledger = bank
    extra = f'mcp_servers: [{{name: bank, url: "http://127.0.0.1:{process.port}/mcp"}}]\n' \
            "mcp: {hold: 1s}\n"
    runtime = make_runtime(tmp_path, policy=(BANK / "policy.yaml").read_text(), extra=extra,
                           clock=Clock())
    alice = seed_user(runtime)
    token = AgentTokens(runtime).create(alice.user.id, "agent", ttl=3600).token
    before = ledger.read_text() if ledger.exists() else ""
    url_client = {**INIT, "params": {**INIT["params"],  # type: ignore[dict-item]
                                     "capabilities": {"elicitation": {"url": {}}}}}
    with TestClient(create_app(runtime), base_url="http://localhost:9091") as client:
        session = rpc(client, token, url_client).headers["mcp-session-id"]
        answer = rpc(client, token, transfer(5000), session)
    runtime.close()
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in answer.text.splitlines()
              if line.startswith("data:")]
    assert events[0]["method"] == "elicitation/create"
    assert events[-1]["id"] == 2 and events[-1]["result"]["isError"] is True
    assert "not given in time" in events[-1]["result"]["content"][0]["text"]
    assert (ledger.read_text() if ledger.exists() else "") == before
