"""The floor for bench/load.py (DESIGN.md §10): the least a gateway can do for the same churn.

Raw ASGI under granian, answering exactly what the load bench's churn driver and wrk send:

* forward-auth: cookie → SHA-256 → dict → 200 with identity headers (as bench/floor_app.py);
  `/admin/users` needs a step-up done within five minutes, else 302 to a new challenge (one
  SQLite INSERT);
* GET /login and GET /step-up/<id>: a form with a one-time CSRF token;
* POST /login: argon2id verification at Stepguard's parameters (OWASP: m=19 MiB, t=2, p=1) off
  the event loop, then the new session stored (one SQLite INSERT) and its cookie set;
* POST /step-up/<id>/totp: the code checked (pyotp), the step-up stored (one SQLite UPDATE).

No policy, no risk, no throttle, no audit, no templates: what any gateway that signs users in
with argon2id and records sessions in SQLite costs at the least. `CHURN_FLOOR` names a JSON file:
{"hash": PHC string, "users": {name: TOTP secret}, "sessions": {token: name}, "db": path}.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import pyotp
from argon2 import PasswordHasher, Type
from argon2.exceptions import VerificationError
from floor_app import COOKIE, lifespan, session_token

STEP_UP_FRESH = 300.0
_SETUP = json.loads(open(os.environ["CHURN_FLOOR"]).read())  # noqa: SIM115 - read once at import
_HASH: str = _SETUP["hash"]
_TOTP: dict[str, str] = _SETUP["users"]
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, type=Type.ID)
# token hash → [user name, time of the last step-up]
_SESSIONS: dict[bytes, list[Any]] = {
    hashlib.sha256(token.encode()).digest(): [name, 0.0]
    for token, name in _SETUP["sessions"].items()}
_CHALLENGES: dict[str, bytes] = {}  # challenge id → token hash
_CSRF: set[str] = set()
_DB = sqlite3.connect(_SETUP["db"], check_same_thread=False, isolation_level=None)
_DB.execute("PRAGMA journal_mode=WAL")
_DB.execute("PRAGMA synchronous=NORMAL")
_DB.execute("CREATE TABLE IF NOT EXISTS sessions (token_hash BLOB PRIMARY KEY, name TEXT, "
            "stepped REAL)")
_DB.execute("CREATE TABLE IF NOT EXISTS challenges (id TEXT PRIMARY KEY, token_hash BLOB)")
_WRITE = threading.Lock()
_HITS = [0]


def _write(sql: str, *args: object) -> None:
    with _WRITE:
        _DB.execute("BEGIN IMMEDIATE")
        _DB.execute(sql, args)
        _DB.execute("COMMIT")


async def _answer(send: Any, status: int, body: bytes = b"",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(body)), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _form(receive: Any) -> dict[str, str]:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return {k: v[0] for k, v in parse_qs(body.decode()).items()}


def _page() -> bytes:
    token = secrets.token_urlsafe(16)
    _CSRF.add(token)
    return (b'<form method="post"><input type="hidden" name="csrf_token" value="'
            + token.encode() + b'"></form>')


def _session(scope: dict[str, Any]) -> bytes | None:
    """The SHA-256 of the request's session cookie (the key of `_SESSIONS`), or None."""
    token = session_token(scope["headers"])
    return hashlib.sha256(token).digest() if token else None


def _header(scope: dict[str, Any], wanted: bytes) -> bytes:
    return next((value for name, value in scope["headers"] if name == wanted), b"")


async def _forward_auth(scope: dict[str, Any], send: Any) -> None:
    _HITS[0] += 1
    key = _session(scope)
    found = _SESSIONS.get(key) if key else None
    if found is None:
        await _answer(send, 401)
        return
    if (_header(scope, b"x-forwarded-uri").startswith(b"/admin/")
            and time.time() - found[1] > STEP_UP_FRESH):
        challenge = secrets.token_urlsafe(16)
        await asyncio.to_thread(_write, "INSERT INTO challenges VALUES (?, ?)", challenge, key)
        _CHALLENGES[challenge] = key  # type: ignore[assignment]
        await _answer(send, 302, headers=[(b"location", b"/step-up/" + challenge.encode())])
        return
    name = found[0].encode()
    await _answer(send, 200, headers=[(b"remote-user", name), (b"remote-name", name)])


async def _sign_in(receive: Any, send: Any) -> None:
    form = await _form(receive)
    name = form.get("username", "")
    if form.get("csrf_token") not in _CSRF or name not in _TOTP:
        await _answer(send, 303, headers=[(b"location", b"/login")])
        return
    _CSRF.discard(form["csrf_token"])
    try:
        await asyncio.to_thread(_HASHER.verify, _HASH, form.get("password", ""))
    except VerificationError:
        await _answer(send, 303, headers=[(b"location", b"/login")])
        return
    token = secrets.token_urlsafe(32)
    key = hashlib.sha256(token.encode()).digest()
    await asyncio.to_thread(_write, "INSERT INTO sessions VALUES (?, ?, 0)", key, name)
    _SESSIONS[key] = [name, 0.0]
    await _answer(send, 303, headers=[(b"location", b"/"),
                                      (b"set-cookie", COOKIE + b"=" + token.encode())])


async def _step_up(path: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
    challenge = path.removeprefix("/step-up/").removesuffix("/totp")
    key = _CHALLENGES.get(challenge)
    if key is None or key != _session(scope):
        await _answer(send, 404)
        return
    if scope["method"] == "GET":
        await _answer(send, 200, _page())
        return
    form = await _form(receive)
    session = _SESSIONS[key]
    if form.get("csrf_token") not in _CSRF or not pyotp.TOTP(_TOTP[session[0]]).verify(
            form.get("code", ""), valid_window=1):
        await _answer(send, 400)
        return
    _CSRF.discard(form["csrf_token"])
    del _CHALLENGES[challenge]
    now = time.time()
    await asyncio.to_thread(_write, "UPDATE sessions SET stepped = ? WHERE token_hash = ?",
                            now, key)
    session[1] = now
    await _answer(send, 303, headers=[(b"location", b"/admin/users")])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/api/authz/forward-auth":
        await _forward_auth(scope, send)
    elif path == "/login":
        if scope["method"] == "POST":
            await _sign_in(receive, send)
        else:
            await _answer(send, 200, _page())
    elif path.startswith("/step-up/"):
        await _step_up(path, scope, receive, send)
    elif path == "/metrics":  # the bench reads its cache counters: every lookup is a hit here
        await _answer(send, 200, b'stepguard_session_cache_total{result="hit"} %d\n' % _HITS[0])
    else:
        await _answer(send, 404)
