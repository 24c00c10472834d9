"""The MCP door served from this process (uvicorn in a thread) in front of the bank over
Streamable HTTP and over stdio, driven by the official SDK client: the same flows as
test_mcp_door.py (which runs `stepguard serve` as its own process), here where coverage and a
debugger see the door and its upstreams — URL elicitation holding a call until the human
approves on the portal, a declined elicitation, -32042 and the retry, the client's GET event
stream and DELETE of its session, on both transports.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from mcp import types
from mcp.shared.exceptions import MCPError

from stepguard.factors.recovery import generate_recovery_codes, hash_recovery_code
from stepguard.gateway import create_app
from stepguard.service.agent_tokens import AgentTokens
from tests.integration.test_mcp_door import (  # the process-level door's checks, run here too
    BANK,
    POLICY,
    Human,
    approval_url,
    call,
    connect,
    start_bank,
    test_bad_messages_get_clear_json_rpc_errors_and_nothing_runs,  # noqa: F401
    test_calls_without_a_rule_run_straight_through,  # noqa: F401
    test_concurrent_retries_of_one_approval_run_once,  # noqa: F401
    test_huge_messages_and_missing_or_foreign_credentials_are_refused,  # noqa: F401
    test_the_agent_cannot_approve_its_own_call,  # noqa: F401
)
from tests.support.gateway import make_runtime, seed_user
from tests.support.servers import free_port


@dataclass
class Door:
    """What test_mcp_door's helpers (`Human`, `connect`) read of a door."""

    port: int
    token: str
    other_token: str
    password: str
    totp: str
    codes: list[str]
    ledger: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mcp_url(self, name: str = "bank") -> str:
        return f"{self.base}/mcp/{name}"

    def executed(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines()]

    def transfers(self, to: str) -> int:
        if not self.ledger.exists():
            return 0
        return sum(1 for line in self.ledger.read_text().splitlines()
                   if json.loads(line).get("to") == to)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    workdir = tmp_path_factory.mktemp("mcp-inprocess")
    ledger = workdir / "ledger.jsonl"
    bank_port, port = free_port(), free_port()
    extra = (f"mcp_servers:\n"
             f"  - {{name: bank, url: \"http://127.0.0.1:{bank_port}/mcp\"}}\n"
             f"  - name: bank-stdio\n"
             f"    command: [{json.dumps(sys.executable)}, {json.dumps(str(BANK / 'bank.py'))}, "
             f"stdio]\n"
             f"    env: {{BANK_LEDGER: {json.dumps(str(ledger))}}}\n"
             f"mcp: {{hold: 20s}}\n")
    runtime = make_runtime(workdir, policy=POLICY, public_url=f"http://localhost:{port}",
                           extra=extra, clock=time.time)  # type: ignore[arg-type]
    alice = seed_user(runtime)
    codes = generate_recovery_codes()
    runtime.store.factors.replace_recovery_codes(
        alice.user.id, [hash_recovery_code(c) for c in codes], now=runtime.now() - 5)
    token = AgentTokens(runtime).create(alice.user.id, "agent", ttl=3600).token
    other = AgentTokens(runtime).create(seed_user(runtime, "bob").user.id, "bobs", ttl=3600).token
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    with start_bank(workdir, ledger, bank_port):
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the in-process door did not start"
        try:
            yield Door(port, token, other, alice.password, alice.totp_secret, list(codes), ledger)
        finally:
            server.should_exit = True
            thread.join(20)
    runtime.close()


SERVERS = ["bank", "bank-stdio"]


@pytest.mark.parametrize("server", SERVERS)
def test_an_elicited_call_runs_once_when_the_human_approves(door: Door, server: str) -> None:
    human = Human(door)  # type: ignore[arg-type]
    to = f"DE-held-{server}"

    async def elicit(context: Any, params: Any) -> Any:
        response = await asyncio.to_thread(human.approve, params.url)
        assert response.status_code == 303
        return types.ElicitResult(action="accept")

    async def run() -> Any:
        async with connect(door, server=server, elicitation=elicit) as client:  # type: ignore[arg-type]
            assert not (await client.call_tool("get_balance", {})).is_error
            return await client.call_tool("transfer", {"amount": 4321, "to": to})

    result = asyncio.run(run())
    assert not result.is_error, result
    assert door.transfers(to) == 1


@pytest.mark.parametrize("server", SERVERS)
def test_a_declined_elicitation_runs_nothing(door: Door, server: str) -> None:
    async def decline(context: Any, params: Any) -> Any:
        return types.ElicitResult(action="decline")

    async def run() -> Any:
        async with connect(door, server=server, elicitation=decline) as client:  # type: ignore[arg-type]
            return await client.call_tool("transfer", {"amount": 4400, "to": "DE-no"})

    result = asyncio.run(run())
    assert result.is_error and "declined" in result.content[0].text
    assert door.transfers("DE-no") == 0


@pytest.mark.parametrize("server", SERVERS)
def test_without_elicitation_the_retry_runs_once(door: Door, server: str) -> None:
    human = Human(door)  # type: ignore[arg-type]
    to = f"DE-retry-{server}"

    args = {"amount": 4500, "to": to}
    with pytest.raises(MCPError) as held:
        asyncio.run(call(door, "transfer", args, server=server))  # type: ignore[arg-type]
    assert human.approve(approval_url(held.value)).status_code == 303
    assert not asyncio.run(call(door, "transfer", args, server=server)).is_error  # type: ignore[arg-type]
    assert door.transfers(to) == 1


@pytest.mark.parametrize("server", SERVERS)
def test_the_event_stream_and_session_end(door: Door, server: str) -> None:
    headers = {"Authorization": f"Bearer {door.token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=door.base, headers=headers, timeout=10) as http:
        init = http.post(f"/mcp/{server}", json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}})
        assert init.status_code == 200, init.text
        session = {"Mcp-Session-Id": init.headers["mcp-session-id"],
                   "Mcp-Protocol-Version": "2025-11-25"}
        note = http.post(f"/mcp/{server}", headers=session,
                         json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert note.status_code == 202
        with http.stream("GET", f"/mcp/{server}", headers={
                **session, "Accept": "text/event-stream"}) as stream:
            assert stream.status_code in (200, 405)  # the HTTP bank may not offer one
        ended = http.delete(f"/mcp/{server}", headers=session)
        assert ended.status_code in (200, 204, 405)
        after = http.post(f"/mcp/{server}", headers=session,
                          json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert after.status_code in (200, 404)


def test_a_denied_call_is_a_tool_error_and_never_reaches_the_bank(door: Door) -> None:
    before = len(door.executed())
    result = asyncio.run(call(door, "close_account", {"account": "checking"}))  # type: ignore[arg-type]
    assert result.is_error and "Agents may not close accounts" in result.content[0].text
    assert len(door.executed()) == before


def test_a_stdio_session_has_one_event_stream_and_ends_with_delete(door: Door) -> None:
    headers = {"Authorization": f"Bearer {door.token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=door.base, headers=headers, timeout=10) as http:
        init = http.post("/mcp/bank-stdio", json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}})
        session = {"Mcp-Session-Id": init.headers["mcp-session-id"],
                   "Mcp-Protocol-Version": "2025-11-25"}
        listen = {**session, "Accept": "text/event-stream"}
        with http.stream("GET", "/mcp/bank-stdio", headers=listen) as first:
            assert first.status_code == 200
            assert http.get("/mcp/bank-stdio", headers=listen).status_code == 409  # one only
        assert http.delete("/mcp/bank-stdio", headers=session).status_code == 200
        assert http.delete("/mcp/bank-stdio", headers=session).status_code == 404
        assert http.get("/mcp/bank-stdio", headers=listen).status_code == 404
        gone = http.post("/mcp/bank-stdio", headers=session,
                         json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == -32001


@pytest.mark.parametrize("server", SERVERS)
def test_a_tool_the_server_does_not_list_is_shown_as_unlisted(door: Door, server: str) -> None:
    human = Human(door)  # type: ignore[arg-type]
    with pytest.raises(MCPError) as held:
        asyncio.run(call(door, "export_everything", {"table": "customers"},  # type: ignore[arg-type]
                         server=server))
    page = human.page(approval_url(held.value))
    assert "export_everything" in page.text and "does not list this tool" in page.text


@pytest.mark.parametrize("server", SERVERS)
def test_an_initialize_the_upstream_refuses_opens_no_session(door: Door, server: str) -> None:
    headers = {"Authorization": f"Bearer {door.token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    refused = httpx.post(f"{door.base}/mcp/{server}", headers=headers, timeout=10, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": 5}})
    text = refused.text
    assert "error" in text and refused.status_code in (200, 400)
    if refused.status_code != 200:
        assert "mcp-session-id" not in refused.headers


@pytest.mark.parametrize(("method", "body", "extra", "status"), [
    ("PUT", "{}", {}, 405),
    ("POST", '{"jsonrpc":"2.0","id":1,"method":"ping"}', {"MCP-Protocol-Version": "2026-06-01"},
     400),
    ("POST", '{"jsonrpc":"2.0","id":"x"}', {}, 400),  # a response with neither result nor error
    ("POST", '{"jsonrpc":"2.0","id":1,"method":7}', {}, 400),
    ("POST", '{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', {}, 400),
])
def test_malformed_requests_are_refused_before_the_upstream(door: Door, method: str, body: str,
                                                            extra: dict[str, str],
                                                            status: int) -> None:
    headers = {"Authorization": f"Bearer {door.token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", **extra}
    answer = httpx.request(method, f"{door.base}/mcp/bank", content=body, headers=headers,
                           timeout=10)
    assert answer.status_code == status, answer.text
