"""The reverse-proxy floor for the gateway benchmark: the least Python relay there is.

Every request is sent to `RELAY_UPSTREAM` through Stepguard's own upstream client
(`stepguard.adapters.relay.Relay`: asyncio protocol + httptools, keep-alive pool) and the answer
sent back, as raw ASGI: no decision, no header filtering, no identity or forwarding headers. It is
what any Python reverse proxy on this server and client costs before it decides anything — a
lower bound for reverse-proxy mode, printed as a reference beside nginx.

Run: `RELAY_UPSTREAM=http://127.0.0.1:8001 python -m granian --interface asgi relay_floor_app:app`
(cwd bench/, with src/ on PYTHONPATH).
"""

from __future__ import annotations

import os
from typing import Any

from stepguard.adapters.relay import Relay

UPSTREAM = os.environ.get("RELAY_UPSTREAM", "")
_relay: Relay | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _relay
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if _relay is None:
        _relay = Relay(timeout=30.0)
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope["path"] + (f"?{query}" if query else "")
    answer = await _relay.send(UPSTREAM, scope["method"], target,
                               [(k, v) for k, v in scope["headers"] if k != b"host"], b"")
    body = b"".join(answer.body)
    if not answer.complete:
        body += b"".join([chunk async for chunk in answer.rest()])
    await send({"type": "http.response.start", "status": answer.status,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
