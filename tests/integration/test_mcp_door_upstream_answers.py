"""The MCP door in process in front of a scripted Streamable HTTP upstream (uvicorn in a thread):
what the door does with the upstream's own answers — a refused initialize opens no session, an
upstream cannot hand a session id to a client that has none, and a client's answer to the
upstream's own request is relayed to it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from stepguard.gateway import create_app
from stepguard.service.agent_tokens import AgentTokens
from tests.support.gateway import make_runtime, seed_user
from tests.support.servers import free_port

RECEIVED: list[dict[str, Any]] = []


async def mcp(request: Request) -> Response:
    message = json.loads(await request.body())
    RECEIVED.append({"message": message, "session": request.headers.get("mcp-session-id")})
    if message.get("method") == "initialize":
        if message["params"]["clientInfo"]["name"] == "refused":
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "error": {
                "code": -32600, "message": "unsupported client"}}, 400)
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "serverInfo": {"name": "scripted", "version": "1"}}},
            headers={"mcp-session-id": "upstream-session-1"})
    if "method" not in message:  # the client's answer to one of this server's requests
        return Response(status_code=202)
    # Any other request: answered with a session id of the upstream's choosing.
    return JSONResponse({"jsonrpc": "2.0", "id": message.get("id"), "result": {}},
                        headers={"mcp-session-id": "planted-by-upstream"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/mcp", mcp,
                                                                   methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(5)


@pytest.fixture()
def door(tmp_path: Path, upstream: str) -> Iterator[tuple[TestClient, str]]:
    runtime = make_runtime(tmp_path, extra=f'mcp_servers: [{{name: s, url: "{upstream}"}}]\n')
    alice = seed_user(runtime)
    token = AgentTokens(runtime).create(alice.user.id, "agent", ttl=3600).token
    with TestClient(create_app(runtime), base_url="http://localhost:9091") as client:
        yield client, token
    runtime.close()


def rpc(client: TestClient, token: str, message: dict[str, Any], session: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    return client.post("/mcp/s", content=json.dumps(message), headers=headers)


def initialize(name: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": name, "version": "1"}}}


def test_an_initialize_the_upstream_refuses_opens_no_session(door) -> None:  # type: ignore[no-untyped-def]
    client, token = door
    refused = rpc(client, token, initialize("refused"))
    assert refused.status_code == 400 and "mcp-session-id" not in refused.headers
    accepted = rpc(client, token, initialize("fine"))
    assert accepted.status_code == 200
    wrapped = accepted.headers["mcp-session-id"]
    assert "upstream-session-1" not in wrapped  # the client sees only Stepguard's wrapped id


def test_an_upstream_cannot_hand_a_session_id_to_a_client_without_one(door) -> None:  # type: ignore[no-untyped-def]
    client, token = door
    answer = rpc(client, token, {"jsonrpc": "2.0", "id": 5, "method": "ping"})
    assert answer.status_code == 200 and answer.json()["id"] == 5
    assert "mcp-session-id" not in answer.headers


def test_a_clients_answer_to_the_upstreams_request_is_relayed_in_its_session(door) -> None:  # type: ignore[no-untyped-def]
    client, token = door
    session = rpc(client, token, initialize("fine")).headers["mcp-session-id"]
    answer = rpc(client, token, {"jsonrpc": "2.0", "id": "upstream-asked-7",
                                 "result": {"roots": []}}, session)
    assert answer.status_code == 202
    assert RECEIVED[-1] == {"message": {"jsonrpc": "2.0", "id": "upstream-asked-7",
                                        "result": {"roots": []}},
                            "session": "upstream-session-1"}
