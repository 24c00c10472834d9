"""The floor for the gateway benchmark (DESIGN.md §10): the least Python forward-auth there is.

Cookie → SHA-256 → dict → identity headers, as raw ASGI: no trusted-proxy check, no policy, no
risk, no audit. It answers the same requests Stepguard's forward-auth gets (any path, same
headers) and is a lower bound, not a competitor. `FLOOR_SESSIONS` holds `token:username` pairs
(comma-separated) of the sessions it knows.

Run: `FLOOR_SESSIONS=tok:alice python -m granian --interface asgi floor_app:app` (cwd bench/).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

COOKIE = b"stepguard_session"
PAIRS = (p.partition(":") for p in os.environ.get("FLOOR_SESSIONS", "").split(","))
SESSIONS = {hashlib.sha256(t.encode()).digest(): [
    (b"remote-user", u.encode()), (b"remote-groups", b""), (b"remote-email", b""),
    (b"remote-name", u.encode()), (b"stepguard-acr", b""), (b"stepguard-amr", b"")]
    for t, _, u in PAIRS if t}
_DENIED = {"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]}
_BODY = {"type": "http.response.body", "body": b""}


async def lifespan(receive: Any, send: Any) -> None:
    """An ASGI lifespan with nothing to start or stop (the bench's raw apps share it)."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def session_token(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The session cookie's value in raw ASGI headers (the last one wins), or b""."""
    token = b""
    for name, value in headers:
        if name == b"cookie":
            for part in value.split(b";"):
                key, _, found = part.strip().partition(b"=")
                if key == COOKIE:
                    token = found
    return token


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    token = session_token(scope["headers"])
    identity = SESSIONS.get(hashlib.sha256(token).digest()) if token else None
    if identity is None:
        await send(_DENIED)
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"0"), *identity]})
    await send(_BODY)
