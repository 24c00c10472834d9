"""The protected application in proxy tests: answers every request with what it received.

Any method, any path: a JSON object with `method`, `path` (as the proxy sent it, still
percent-encoded), `query`, `body` (decoded as UTF-8 with replacement) and `headers`, a list of
[name, value] pairs exactly as they arrived (lower-cased by the HTTP parser, duplicates and
underscores kept), so a test can prove a forged identity header never got through.

Run: `python -m uvicorn tests.support.upstream_app:app`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def echo(request: Request) -> Response:
    body = await request.body()
    scope = request.scope
    return JSONResponse(
        {
            "method": request.method,
            "path": scope.get("raw_path", b"").decode("latin-1") or scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "body": body.decode("utf-8", errors="replace"),
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in scope["headers"]
            ],
        },
        # `X-Answer-Cache-Control` asks for another Cache-Control ("" for none): what a proxy
        # adds to, or keeps of, an answer's headers can then be tested.
        headers=({"Cache-Control": cache} if (cache := request.headers.get(
            "x-answer-cache-control", "no-store")) else {}),
    )


async def websocket_echo(websocket: WebSocket) -> None:
    """WebSocket on any path: first a JSON message like `echo`'s (path and headers as received
    at the upgrade), then every message (text or binary) echoed back with an `echo:` prefix."""
    scope = websocket.scope
    await websocket.accept(subprotocol=(scope.get("subprotocols") or [None])[0])
    await websocket.send_json({
        "path": scope.get("raw_path", b"").decode("latin-1") or scope["path"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    })
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await websocket.send_text(f"echo:{message['text']}")
        else:
            await websocket.send_bytes(b"echo:" + (message.get("bytes") or b""))


def received_headers(echoed: dict[str, object], name: str) -> list[str]:
    """Values of every header the upstream received whose name equals `name` when case and
    `_`/`-` are ignored (`Remote-User`, `remote_user`, `REMOTE-USER` are one name here)."""
    wanted = _normalised(name)
    headers = echoed["headers"]
    assert isinstance(headers, list)
    return [value for key, value in headers if _normalised(key) == wanted]


def _normalised(name: str) -> str:
    return name.lower().replace("_", "-")


app = Starlette(routes=[Route("/{path:path}", echo, methods=METHODS),
                        WebSocketRoute("/{path:path}", websocket_echo)])
