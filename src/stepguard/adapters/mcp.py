"""The MCP door: Stepguard in front of MCP servers, holding a sensitive tool call until the human
behind the agent passes a step-up bound to that exact call.

`/mcp/<server>` speaks MCP's Streamable HTTP transport (the 2025 handshake revisions) to clients
and relays to the configured upstream (`adapters.mcp_upstream`). Every POST carries one
JSON-RPC message, parsed once with duplicate keys refused; batches, methods outside the
specification's client-to-server list, a client's own `notifications/elicitation/complete` and
answers to elicitations Stepguard never sent are refused with JSON-RPC errors. Everything else
is relayed unread, the upstream's answer streamed back.

`tools/call` is judged: the call becomes a `RequestContext` (`core.toolcall`) decided by the
policy through `Guard.judge` — the same decide → consume → audit as every door — for the agent's
session (`service.agent_tokens`). Allowed: the canonical call is sent upstream (exactly what was
decided on). Denied: a tool error. A step-up: a challenge whose held request is the call, bound
to `call_digest` (server, tool, the tool's current definition, every argument), answered by the
human on `/step-up/<id>` with their own factors; the grant goes to the agent's session, single
use. A client that declared URL elicitation gets `elicitation/create` (mode `url`) on the
POST's SSE stream and, once the human passed, `notifications/elicitation/complete` and the
call's result; any other gets error -32042 with the link, and its retry with the same arguments
runs once.

Session ids are the upstream's, wrapped with an HMAC over the agent's session: another agent
cannot ride a session, and the wrapper carries what the door must remember of `initialize`
(URL elicitation declared, the client's name), so any instance can serve any request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from stepguard.adapters.mcp_upstream import (
    SESSION_HEADER,
    HttpUpstream,
    Reply,
    StdioUpstream,
    Upstream,
    UpstreamError,
    sse_event,
    tool_definition,
)
from stepguard.core.canonical import loads_json
from stepguard.core.decision import Outcome
from stepguard.core.errors import BadRequest, StoreUnavailable, VerificationFailed
from stepguard.core.toolcall import (
    ToolCall,
    call_context,
    call_digest,
    canonical_json,
    definition_digest,
    tool_call,
)
from stepguard.service.agent_tokens import Agent, AgentTokens
from stepguard.service.guard import Check, Guard, Loaded
from stepguard.service.runtime import Runtime
from stepguard.service.stepup import AGENT_CALL, HeldRequest, HeldTooLarge, StepUp

PREFIX = "/mcp/"
URL_ELICITATION_REQUIRED = -32042
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
INTERNAL_ERROR = -32603
# Client-to-server methods of the specification (2025-11-25); anything else is refused.
REQUESTS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
    "resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list",
    "prompts/get", "completion/complete", "logging/setLevel", "tasks/get", "tasks/result",
    "tasks/list", "tasks/cancel"})
NOTIFICATIONS = frozenset({
    "notifications/initialized", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed", "notifications/tasks/status"})
OWN_ID = "stepguard-"  # ids of the requests Stepguard itself sends to the client
POLL = 0.25  # seconds between looks at a held call's challenge


@dataclass(frozen=True, slots=True)
class McpSession:
    """What the door remembers of an MCP session, carried in its wrapped id."""

    upstream: str
    url_elicitation: bool = False
    client: str = ""


@dataclass
class _Waiter:
    """A held call's elicitation, waiting for the client's answer."""

    agent: str
    event: asyncio.Event
    action: str = ""


class McpDoor:
    """The raw ASGI handler of `/mcp/<server>`."""

    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp) -> None:
        self.rt, self.guard, self.stepup = runtime, guard, stepup
        self.agents = AgentTokens(runtime)
        settings = runtime.config.mcp
        self.settings = settings
        self.upstreams: dict[str, Upstream] = {}
        for server in runtime.config.mcp_servers:
            self.upstreams[server.name] = (
                HttpUpstream(server.url, timeout=settings.upstream_timeout) if server.url else
                StdioUpstream(server.command, env=server.env, cwd=server.cwd,
                              timeout=settings.upstream_timeout, idle=settings.session_idle))
        self._key = hmac.new(runtime.cookie_key, b"stepguard mcp session", "sha256").digest()
        self._redact = frozenset(name.casefold() for name in settings.redact)
        self.waiters: dict[str, _Waiter] = {}

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path"][len(PREFIX):].rstrip("/")
        upstream = self.upstreams.get(name)
        if upstream is None:
            await _plain(send, 404, "no such MCP server\n")
            return
        if scope["method"] not in ("POST", "GET", "DELETE"):
            await _plain(send, 405, "use POST, GET or DELETE\n", {"allow": "POST, GET, DELETE"})
            return
        headers = _headers(scope)
        try:
            agent = await run_in_threadpool(self.agents.authenticate,
                                            _bearer(headers.get("authorization")))
        except VerificationFailed as exc:
            await _plain(send, 401, f"{exc.reason}\n", {
                "www-authenticate": f'Bearer realm="stepguard", error="invalid_token", '
                                    f'error_description="{exc.reason}"'})
            return
        except StoreUnavailable:
            await _plain(send, 503, "Stepguard cannot reach its store; try again shortly.\n",
                         {"retry-after": "5"})
            return
        version = headers.get("mcp-protocol-version", "")
        if version and version > "2025-12-31":
            await _error(send, 400, None, INVALID_REQUEST,
                         f"MCP protocol version {version[:32]!r} is not supported here; use the "
                         "initialize handshake (2025-11-25 or earlier)")
            return
        session = self._session(agent, headers.get(SESSION_HEADER))
        if session is False:
            await _error(send, 404, None, -32001, "Session not found")
            return
        exchange = _Exchange(self, scope, send, headers, agent, name, upstream, session)
        try:
            await exchange.run(receive)
        except UpstreamError as exc:
            await exchange.fail(502, INTERNAL_ERROR, str(exc))
        except StoreUnavailable:
            await exchange.fail(503, INTERNAL_ERROR, "Stepguard cannot reach its store; the "
                                "call was not run. Try again shortly.")

    # ------------------------------------------------------------------ session ids

    def wrap(self, agent: Agent, session: McpSession) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(
            [session.upstream, session.url_elicitation, session.client],
            separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{payload}.{self._mac(agent, payload)}"

    def _session(self, agent: Agent, wrapped: str | None) -> McpSession | None | bool:
        """None: no session id sent; False: one that is not this agent's (or forged)."""
        if wrapped is None:
            return None
        payload, _, mac = wrapped.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(agent, payload).encode()):
            return False
        try:
            upstream, elicitation, client = json.loads(
                base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, TypeError):
            return False
        return McpSession(str(upstream), bool(elicitation), str(client))

    def _mac(self, agent: Agent, payload: str) -> str:
        message = f"{agent.session_id}\0{payload}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:43]

    # ------------------------------------------------------------------ helpers

    def redacted(self, value: Any) -> Any:
        """Arguments for the ledger: values under a configured name become '[redacted]'."""
        if isinstance(value, Mapping):
            return {k: "[redacted]" if k.casefold() in self._redact else self.redacted(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.redacted(v) for v in value]
        return value

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()


class _Exchange:
    """One HTTP request at the door."""

    def __init__(self, door: McpDoor, scope: Scope, send: Send, headers: dict[str, str],
                 agent: Agent, server: str, upstream: Upstream,
                 session: McpSession | None | bool) -> None:
        self.door, self.scope, self.send, self.headers = door, scope, send, headers
        self.agent, self.server, self.upstream = agent, server, upstream
        self.session = session if isinstance(session, McpSession) else None
        self.started = False

    @property
    def upstream_session(self) -> str | None:
        return self.session.upstream if self.session else None

    async def run(self, receive: Receive) -> None:
        method = self.scope["method"]
        if method != "POST":
            await self.relay(await self.upstream.send(method, None, self.headers,
                                                      self.upstream_session))
            return
        body = await _body(receive, self.door.settings.max_body)
        if body is None:
            await _error(self.send, 413, None, INVALID_REQUEST,
                         f"the message is larger than {self.door.settings.max_body} bytes")
            return
        try:
            message = loads_json(body)
        except BadRequest as exc:
            await _error(self.send, 400, None, PARSE_ERROR, str(exc))
            return
        problem = _shape(message)
        if problem is not None:
            ident = message.get("id") if isinstance(message, dict) else None
            await _error(self.send, 400, _safe_id(ident), problem[0], problem[1])
            return
        await self.dispatch(message, body)

    async def dispatch(self, message: dict[str, Any], body: bytes) -> None:
        name = message.get("method")
        if name is None:  # a response from the client
            await self.answer(message, body)
        elif name == "initialize":
            await self.initialize(message, body)
        elif name == "tools/call":
            await self.tool_call(message)
        else:
            await self.relay(await self.upstream.send("POST", body, self.headers,
                                                      self.upstream_session))

    async def answer(self, message: dict[str, Any], body: bytes) -> None:
        ident = message.get("id")
        if isinstance(ident, str) and ident.startswith(OWN_ID):
            waiter = self.door.waiters.get(ident)
            if waiter is None or waiter.agent != self.agent.session_id:
                await _error(self.send, 400, None, INVALID_REQUEST,
                             "no elicitation of this client is waiting for this answer")
                return
            result = message.get("result")
            action = result.get("action") if isinstance(result, dict) else None
            waiter.action = action if isinstance(action, str) else "cancel"
            waiter.event.set()
            await _plain(self.send, 202, "")
            return
        await self.relay(await self.upstream.send("POST", body, self.headers,
                                                  self.upstream_session))

    async def initialize(self, message: dict[str, Any], body: bytes) -> None:
        params = message.get("params") or {}
        capabilities = params.get("capabilities") if isinstance(params, dict) else None
        elicitation = capabilities.get("elicitation") if isinstance(capabilities, dict) else None
        url_mode = isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)
        info = params.get("clientInfo") if isinstance(params, dict) else None
        client = info.get("name") if isinstance(info, dict) else ""
        client = str(client)[:64] if isinstance(client, str) else ""
        reply = await self.upstream.send("POST", body, self.headers, None)
        upstream_id = reply.headers.pop(SESSION_HEADER, None)
        self.session = McpSession(upstream_id or "", url_mode, client)
        if reply.status == 200:  # a session only for an initialize the upstream accepted
            reply.headers[SESSION_HEADER] = self.door.wrap(self.agent, self.session)
        await self.relay(reply)

    # ------------------------------------------------------------------ tools/call

    async def tool_call(self, message: dict[str, Any]) -> None:
        ident = message["id"]
        try:
            call = tool_call(self.server, message.get("params"))
        except BadRequest as exc:
            await _error(self.send, 200, ident, INVALID_PARAMS, str(exc))
            return
        door = self.door
        loaded = await run_in_threadpool(door.agents.loaded, self.agent, ip=self.client_ip,
                                         user_agent=self.client_name)
        context = call_context(call, client_ip=self.client_ip, user_agent=self.client_name,
                               digest=call_digest(call, definition="unchecked"))
        pre = door.guard.preview(context, loaded)
        definition: dict[str, Any] | None = None
        if not (pre.decision.allowed and not pre.decision.grant_id):
            # Not a plain allow: bind to the tool as its server describes it now.
            definition = await tool_definition(self.upstream, call.tool, self.headers,
                                               self.upstream_session)
            context = replace(context, call_digest=call_digest(
                call, definition=definition_digest(definition)))
        check = await self.judge(context, loaded, call)
        decision = check.decision
        if decision.allowed:
            await self.run_call(message, call)
        elif decision.outcome is Outcome.DENY:
            await self.tool_error(ident, "Stepguard refused this call: "
                                  + " ".join(decision.reasons))
        else:
            await self.step_up(message, call, check, loaded, definition)

    async def judge(self, context: Any, loaded: Loaded, call: ToolCall) -> Check:
        detail = {"via": "mcp", "server": call.server, "tool": call.tool,
                  "client": self.client_name, "agent_token": self.agent.token.id,
                  "arguments": self.door.redacted(dict(call.arguments)),
                  "call_digest": context.call_digest}
        return await run_in_threadpool(self.door.guard.judge, context, loaded, detail=detail)

    async def run_call(self, message: dict[str, Any], call: ToolCall) -> None:
        """Send upstream exactly what was decided on: the canonical call."""
        params = dict(message.get("params") or {})
        params["name"], params["arguments"] = call.tool, dict(call.arguments)
        body = canonical_json({**message, "params": params}).encode("utf-8")
        reply = await self.upstream.send("POST", body, self.headers, self.upstream_session)
        await self.relay(reply)

    async def step_up(self, message: dict[str, Any], call: ToolCall, check: Check,
                      loaded: Loaded, definition: dict[str, Any] | None) -> None:
        ident = message["id"]
        held = {"client": self.client_name, "server": call.server, "tool": call.tool,
                "title": _text(definition, "title"),
                "description": _text(definition, "description"),
                "arguments": dict(call.arguments), "listed": definition is not None,
                "digest": check.context.call_digest}
        try:
            challenge = await run_in_threadpool(
                self.door.stepup.start, check.decision, check.context, loaded.record,
                return_url="/account",
                held=HeldRequest(AGENT_CALL, (), canonical_json(held).encode("utf-8")))
        except HeldTooLarge:
            await self.tool_error(ident, "This call's arguments are too large to be shown for "
                                  "approval, so Stepguard cannot run it.")
            return
        url = self.door.rt.config.server.public_url.rstrip("/") + f"/step-up/{challenge.id}"
        text = (f"Stepguard needs {loaded.user.username} to approve the call to "
                f"{call.tool} on {call.server}: " + " ".join(check.decision.reasons))
        if self.session is not None and self.session.url_elicitation:
            await self.hold(message, call, check, challenge.id, url, text)
            return
        data = {"elicitations": [{"mode": "url", "elicitationId": challenge.id, "url": url,
                                  "message": text}]}
        await _error(self.send, 200, ident, URL_ELICITATION_REQUIRED,
                     "This call needs the user's approval at the URL given; retry it after.",
                     data)

    async def hold(self, message: dict[str, Any], call: ToolCall, check: Check,
                   challenge_id: str, url: str, text: str) -> None:
        """URL elicitation on this POST's stream; then the call, once, when the human passed."""
        door, ident = self.door, message["id"]
        request_id = OWN_ID + secrets.token_urlsafe(16)
        waiter = _Waiter(self.agent.session_id, asyncio.Event())
        door.waiters[request_id] = waiter
        await self.start_events()
        try:
            await self.event({"jsonrpc": "2.0", "id": request_id, "method": "elicitation/create",
                              "params": {"mode": "url", "message": text, "url": url,
                                         "elicitationId": challenge_id}})
            outcome = await self.wait(challenge_id, waiter)
        finally:
            door.waiters.pop(request_id, None)
        if outcome != "passed":
            why = {"decline": "The user declined this call.",
                   "cancel": "The approval was cancelled."}.get(
                outcome, "The approval was not given in time.")
            await self.event(_tool_result(ident, why + " Stepguard did not run it."))
            await self.end_events()
            return
        await self.event({"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
                          "params": {"elicitationId": challenge_id}})
        loaded = await run_in_threadpool(door.agents.loaded, self.agent, ip=self.client_ip,
                                         user_agent=self.client_name)
        again = await self.judge(check.context, loaded, call)
        if not again.decision.allowed:
            await self.event(_tool_result(ident, "The approval was already used; Stepguard did "
                                          "not run this call."))
            await self.end_events()
            return
        await self.run_call(message, call)

    async def wait(self, challenge_id: str, waiter: _Waiter) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.door.settings.hold
        store = self.door.rt.store
        while loop.time() < deadline:
            if waiter.action in ("decline", "cancel"):
                return waiter.action
            challenge = await run_in_threadpool(store.challenges.get, challenge_id)
            if challenge is None or challenge.status not in ("pending", "passed"):
                return "expired"
            if challenge.status == "passed":
                return "passed"
            if challenge.expires <= self.door.rt.now():
                return "expired"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), POLL)
        return "expired"

    async def tool_error(self, ident: Any, text: str) -> None:
        if self.started:
            await self.event(_tool_result(ident, text))
            await self.end_events()
            return
        body = json.dumps(_tool_result(ident, text)).encode()
        await _start(self.send, 200, {"content-type": "application/json"})
        await self.send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ answering

    async def relay(self, reply: Reply) -> None:
        """The upstream's answer to the client, streamed (or into the open event stream)."""
        try:
            if self.started:
                await self.relay_into_events(reply)
                return
            headers = dict(reply.headers)
            if SESSION_HEADER in headers and self.session is not None:
                headers[SESSION_HEADER] = self.door.wrap(self.agent, self.session)
            elif SESSION_HEADER in headers:
                headers.pop(SESSION_HEADER)
            await _start(self.send, reply.status, headers)
            async for chunk in reply.body:
                await self.send({"type": "http.response.body", "body": chunk,
                                 "more_body": True})
            await self.send({"type": "http.response.body", "body": b""})
        finally:
            await reply.close()

    async def relay_into_events(self, reply: Reply) -> None:
        if reply.headers.get("content-type", "").startswith("text/event-stream"):
            async for chunk in reply.body:
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            data = b"".join([chunk async for chunk in reply.body])
            if data:
                await self.send({"type": "http.response.body",
                                 "body": b"event: message\ndata: " + data.replace(b"\n", b"")
                                 + b"\n\n", "more_body": True})
        await self.end_events()

    async def start_events(self) -> None:
        await _start(self.send, 200, {"content-type": "text/event-stream"})
        self.started = True

    async def event(self, message: Mapping[str, Any]) -> None:
        await self.send({"type": "http.response.body", "body": sse_event(message),
                         "more_body": True})

    async def end_events(self) -> None:
        await self.send({"type": "http.response.body", "body": b""})

    async def fail(self, status: int, code: int, text: str) -> None:
        if self.started:
            await self.event({"jsonrpc": "2.0", "id": None,
                              "error": {"code": code, "message": text}})
            await self.end_events()
        else:
            await _error(self.send, status, None, code, text)

    @property
    def client_ip(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    @property
    def client_name(self) -> str:
        return self.session.client if self.session else ""


# ---------------------------------------------------------------------- message checks


def _shape(message: Any) -> tuple[int, str] | None:
    """(code, text) when the message is not one JSON-RPC 2.0 message the door accepts."""
    if isinstance(message, list):
        return INVALID_REQUEST, "batches are not supported: send one message per request"
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return INVALID_REQUEST, "expected one JSON-RPC 2.0 message (an object)"
    ident = message.get("id", 0)
    if isinstance(ident, bool) or not isinstance(ident, int | str) or (
            isinstance(ident, str) and len(ident) > 256):
        return INVALID_REQUEST, "the id must be a string or an integer"
    method = message.get("method")
    if method is None:
        if "id" not in message or ("result" in message) == ("error" in message):
            return INVALID_REQUEST, "a response needs an id and one of result or error"
        return None
    if not isinstance(method, str):
        return INVALID_REQUEST, "the method must be a string"
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        return INVALID_PARAMS, "params must be an object"
    if method == "notifications/elicitation/complete":
        return INVALID_REQUEST, "only the server sends notifications/elicitation/complete"
    known = REQUESTS if "id" in message else NOTIFICATIONS
    if method not in known:
        return METHOD_NOT_FOUND, f"method {method[:64]!r} is not available through Stepguard"
    return None


def _safe_id(ident: Any) -> Any:
    return ident if isinstance(ident, int | str) and not isinstance(ident, bool) else None


def _tool_result(ident: Any, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident,
            "result": {"content": [{"type": "text", "text": text}], "isError": True}}


def _text(definition: Mapping[str, Any] | None, key: str) -> str:
    value = definition.get(key) if definition else None
    return value[:2000] if isinstance(value, str) else ""


def _bearer(value: str | None) -> str | None:
    scheme, _, token = (value or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
    return headers


async def _body(receive: Receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _start(send: Send, status: int, headers: Mapping[str, str]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def _plain(send: Send, status: int, text: str,
                 headers: Mapping[str, str] | None = None) -> None:
    await _start(send, status, {"content-type": "text/plain; charset=utf-8", **(headers or {})})
    await send({"type": "http.response.body", "body": text.encode()})


async def _error(send: Send, status: int, ident: Any, code: int, text: str,
                 data: Any = None) -> None:
    error: dict[str, Any] = {"code": code, "message": text}
    if data is not None:
        error["data"] = data
    body = json.dumps({"jsonrpc": "2.0", "id": ident, "error": error}).encode()
    await _start(send, status, {"content-type": "application/json"})
    await send({"type": "http.response.body", "body": body})
