"""A small but real OpenID provider for the demo and the tests (`stepguard demo --idp`).

Not for production: it keeps everything in memory and its users sign in by picking a name.
It is a genuine provider over HTTP all the same: discovery, a JWKS with key rotation, the
authorization endpoint (code flow, PKCE S256 required, `state`, `nonce`, `prompt=login`,
`max_age`, `acr_values`), the token endpoint (client authentication, single-use codes), RP-
initiated logout and back-channel logout, with tokens signed by joserfc (authlib's JOSE layer).

The "user" picks how they authenticate on the login page: a password (acr `urn:demo-idp:pwd`,
amr pwd), a password and a one-time code (`urn:demo-idp:mfa`, pwd otp) or a passkey
(`urn:demo-idp:phr`, hwk user). An existing sign-in is reused unless `prompt=login` or
`max_age` asks for a new one, or (when `honour_acr` is on) it is weaker than `acr_values`.
With `honour_acr = False` it behaves like a provider that ignores `acr_values`.

It also speaks Microsoft Entra ID's authentication contexts: an essential `acrs` claim request
(`claims={"id_token":{"acrs":{"essential":true,"value":"c1"}}}`, or `values`) makes a weaker
sign-in than the context needs (`AUTH_CONTEXTS`) ask again, and the id_token's `acrs` lists the
requested contexts the sign-in satisfied. With `honour_acrs = False` it ignores that request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

METHODS: dict[str, tuple[str, tuple[str, ...], int]] = {  # method -> acr, amr, rank
    "pwd": ("urn:demo-idp:pwd", ("pwd",), 1),
    "mfa": ("urn:demo-idp:mfa", ("pwd", "otp"), 2),
    "phr": ("urn:demo-idp:phr", ("hwk", "user"), 3),
}
ACR_RANK = {acr: rank for acr, _amr, rank in METHODS.values()}
# How Stepguard maps these (the `acr_levels` of a provider entry).
ACR_LEVELS = {"urn:demo-idp:pwd": "aal1", "urn:demo-idp:mfa": "aal2", "urn:demo-idp:phr": "aal3"}
# Entra ID style authentication contexts: id -> the weakest sign-in method that satisfies it.
AUTH_CONTEXTS = {"c1": "mfa", "c2": "phr"}
SSO_COOKIE = "demo_idp_sso"
Hook = Callable[[dict[str, Any], dict[str, Any]], "str | tuple[dict[str, Any], dict[str, Any]]"]


@dataclass
class Client:
    client_id: str
    secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    backchannel_logout_uri: str = ""


@dataclass
class User:
    sub: str
    username: str
    email: str = ""
    name: str = ""
    groups: list[str] = field(default_factory=list)
    email_verified: bool = True
    active: bool = True


@dataclass
class _Login:
    sub: str
    method: str
    auth_time: int
    sid: str


class DemoIdp:
    """The provider's state and its Starlette application (`app`)."""

    def __init__(self, issuer: str, *, honour_acr: bool = True, honour_acrs: bool = True,
                 alg: str = "ES256", clock: Callable[[], float] = time.time) -> None:
        self.issuer, self.honour_acr, self.alg, self.clock = issuer, honour_acr, alg, clock
        self.honour_acrs = honour_acrs
        self.clients: dict[str, Client] = {}
        self.users: dict[str, User] = {}
        self.keys: list[ECKey] = []
        self.rotate_keys()
        self._pending: dict[str, dict[str, str]] = {}
        self._codes: dict[str, dict[str, Any]] = {}
        self._sso: dict[str, _Login] = {}
        self._lock = threading.Lock()
        self.id_token_hook: Hook | None = None  # tests: change or replace the id_token
        self.token_requests = 0
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/jwks", self.jwks),
            Route("/authorize", self.authorize),
            Route("/login", self.login, methods=["POST"]),
            Route("/token", self.token, methods=["POST"]),
            Route("/logout", self.end_session),
            Route("/userinfo", self.userinfo),
        ])
        self._access: dict[str, str] = {}  # access token -> sub
        self.userinfo_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    # --- administration (the demo and the tests call these) -------------------------------------

    def add_client(self, client: Client) -> None:
        self.clients[client.client_id] = client

    def add_user(self, user: User) -> None:
        self.users[user.sub] = user

    def rotate_keys(self, *, keep_old: bool = True) -> str:
        """A new signing key; the old ones stay published unless `keep_old` is False."""
        kid = f"k{len(self.keys) + 1}-{secrets.token_hex(4)}"
        key = ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": "ES256"})
        self.keys = [key, *(self.keys if keep_old else [])]
        return kid

    def deprovision(self, sub: str) -> None:
        """The user leaves the company: no new sign-in, and their provider sessions end."""
        self.users[sub].active = False
        with self._lock:
            for sid in [s for s, login in self._sso.items() if login.sub == sub]:
                del self._sso[sid]

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        key = self.keys[0]
        return jwt.encode({"kid": key.kid, "alg": self.alg, **header}, claims, key)

    def logout_token(self, client_id: str, *, sub: str = "", sid: str = "",
                     **extra: Any) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": client_id, "iat": now, "exp": now + 120,
            "jti": secrets.token_urlsafe(16),
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}
        if sub:
            claims["sub"] = sub
        if sid:
            claims["sid"] = sid
        claims.update(extra)
        return self.sign({"typ": "logout+jwt"}, claims)

    def backchannel_logout(self, client_id: str, *, sub: str = "", sid: str = "") -> int:
        """Send a logout token to the client's back-channel URI; the HTTP status it answered."""
        client = self.clients[client_id]
        token = self.logout_token(client_id, sub=sub, sid=sid)
        response = httpx.post(client.backchannel_logout_uri, data={"logout_token": token},
                              timeout=5)
        return response.status_code

    def sessions_of(self, sub: str) -> list[str]:
        return [sid for sid, login in self._sso.items() if login.sub == sub]

    # --- endpoints ------------------------------------------------------------------------------

    async def discovery(self, _: Request) -> Response:
        i = self.issuer
        return JSONResponse({
            "issuer": i, "authorization_endpoint": f"{i}/authorize",
            "token_endpoint": f"{i}/token", "jwks_uri": f"{i}/jwks",
            "end_session_endpoint": f"{i}/logout", "userinfo_endpoint": f"{i}/userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"], "scopes_supported": ["openid", "profile",
                                                                        "email", "groups"],
            "id_token_signing_alg_values_supported": [self.alg],
            "code_challenge_methods_supported": ["S256"],
            "acr_values_supported": list(ACR_RANK), "claims_parameter_supported": True,
            "authorization_response_iss_parameter_supported": True,
            "backchannel_logout_supported": True, "backchannel_logout_session_supported": True,
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"]})

    async def jwks(self, _: Request) -> Response:
        keys: list[Any] = list(self.keys)
        return JSONResponse(KeySet(keys).as_dict(private=False))

    async def authorize(self, request: Request) -> Response:
        q = dict(request.query_params)
        client = self.clients.get(q.get("client_id", ""))
        if client is None or q.get("redirect_uri") not in client.redirect_uris:
            return HTMLResponse("unknown client or redirect_uri", 400)
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return self._error(q, "unsupported_response_type")
        if q.get("code_challenge_method") != "S256" or len(q.get("code_challenge", "")) < 43:
            return self._error(q, "invalid_request", "PKCE S256 is required")
        login = self._sso.get(request.cookies.get(SSO_COOKIE, ""))
        if login is not None and self._reusable(login, q):
            return self._issue(q, login)
        if q.get("prompt") == "none":
            return self._error(q, "login_required")
        rid = secrets.token_urlsafe(16)
        self._pending[rid] = q
        return self._login_page(rid, q)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        q = self._pending.pop(str(form.get("rid", "")), None)
        if q is None:
            return HTMLResponse("this sign-in expired", 400)
        user = next((u for u in self.users.values() if u.username == form.get("username")), None)
        method = str(form.get("method", ""))
        if user is None or method not in METHODS:
            return HTMLResponse("unknown user or method", 400)
        if not user.active:
            return self._error(q, "access_denied", "the account is disabled")
        if _rank(method) < self._wanted_rank(q):
            rid = secrets.token_urlsafe(16)
            self._pending[rid] = q
            return self._login_page(rid, q, "This application needs a stronger sign-in.")
        sid = secrets.token_urlsafe(16)
        login = _Login(user.sub, method, int(self.clock()), sid)
        with self._lock:
            self._sso[sid] = login
        response = self._issue(q, login)
        response.set_cookie(SSO_COOKIE, sid, httponly=True, samesite="lax", path="/")
        return response

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
        form = {k: str(v) for k, v in (await request.form()).items()}
        client = self._client_auth(request, form)
        if client is None:
            return JSONResponse({"error": "invalid_client"}, 401)
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant["client_id"] != client.client_id:
            return JSONResponse({"error": "invalid_grant"}, 400)
        if grant["expires"] < self.clock() or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, 400)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if not hmac.compare_digest(challenge.rstrip(b"=").decode(), grant["code_challenge"]):
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        access = secrets.token_urlsafe(24)
        self._access[access] = grant["login"].sub
        return JSONResponse({"access_token": access, "token_type": "Bearer",
                             "expires_in": 300, "id_token": self._id_token(grant)},
                            headers={"Cache-Control": "no-store"})

    async def userinfo(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        sub = self._access.get(header[7:]) if header.lower().startswith("bearer ") else None
        if sub is None:
            return JSONResponse({"error": "invalid_token"}, 401)
        user = self.users[sub]
        info: dict[str, Any] = {"sub": sub, "preferred_username": user.username,
                                "name": user.name, "email": user.email,
                                "email_verified": user.email_verified, "groups": user.groups}
        if self.userinfo_hook is not None:
            info = self.userinfo_hook(info)
        return JSONResponse(info)

    async def end_session(self, request: Request) -> Response:
        q = request.query_params
        sid = request.cookies.get(SSO_COOKIE, "")
        with self._lock:
            self._sso.pop(sid, None)
        client = self.clients.get(q.get("client_id", ""))
        target = q.get("post_logout_redirect_uri", "")
        if client is not None and target in client.post_logout_redirect_uris:
            state = q.get("state")
            response: Response = RedirectResponse(
                target + (("?" + urlencode({"state": state})) if state else ""), 302)
        else:
            response = HTMLResponse("<p>You are signed out of the demo provider.</p>")
        response.delete_cookie(SSO_COOKIE, path="/")
        return response

    # --- helpers --------------------------------------------------------------------------------

    def _reusable(self, login: _Login, q: dict[str, str]) -> bool:
        if q.get("prompt") == "login" or not self.users[login.sub].active:
            return False
        max_age = q.get("max_age")
        if max_age is not None and (not max_age.isdigit()
                                    or self.clock() - login.auth_time > int(max_age)):
            return False
        return _rank(login.method) >= self._wanted_rank(q)

    def _wanted_rank(self, q: dict[str, str]) -> int:
        """The rank a sign-in needs: the weakest requested acr, the strongest requested auth
        context (each only when honoured)."""
        acrs = [ACR_RANK[v] for v in q.get("acr_values", "").split() if v in ACR_RANK]
        contexts = [_rank(AUTH_CONTEXTS[c]) for c in self._requested_contexts(q)]
        return max(min(acrs, default=0) if self.honour_acr else 0,
                   max(contexts, default=0) if self.honour_acrs else 0)

    def _requested_contexts(self, q: dict[str, str]) -> list[str]:
        try:
            wanted = json.loads(q.get("claims", "{}"))["id_token"]["acrs"]
        except (ValueError, KeyError, TypeError):
            return []
        if not isinstance(wanted, dict):
            return []
        values = wanted.get("values", [wanted.get("value")])
        return [v for v in values if isinstance(v, str) and v in AUTH_CONTEXTS] \
            if isinstance(values, list) else []

    def _issue(self, q: dict[str, str], login: _Login) -> Response:
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = {"client_id": q["client_id"], "redirect_uri": q["redirect_uri"],
                                 "code_challenge": q["code_challenge"], "nonce": q.get("nonce"),
                                 "login": login, "expires": self.clock() + 60,
                                 "contexts": self._requested_contexts(q)}
        query = {"code": code, "iss": self.issuer}
        if "state" in q:
            query["state"] = q["state"]
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(query)}", 302)

    def _error(self, q: dict[str, str], error: str, description: str = "") -> Response:
        query = {"error": error, "iss": self.issuer}
        if description:
            query["error_description"] = description
        if "state" in q:
            query["state"] = q["state"]
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(query)}", 302)

    def _client_auth(self, request: Request, form: dict[str, str]) -> Client | None:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:]).decode()
            except ValueError:
                return None
            client_id, _, secret = decoded.partition(":")
            from urllib.parse import unquote_plus

            client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        client = self.clients.get(client_id)
        if client is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
            return None
        return client

    def _id_token(self, grant: dict[str, Any]) -> str:
        login: _Login = grant["login"]
        user = self.users[login.sub]
        acr, amr, _ = METHODS[login.method]
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": user.sub, "aud": grant["client_id"], "iat": now,
            "exp": now + 300, "auth_time": login.auth_time, "acr": acr, "amr": list(amr),
            "sid": login.sid, "preferred_username": user.username, "name": user.name,
            "email": user.email, "email_verified": user.email_verified, "groups": user.groups}
        if grant["nonce"] is not None:
            claims["nonce"] = grant["nonce"]
        satisfied = [c for c in grant["contexts"]
                     if _rank(login.method) >= _rank(AUTH_CONTEXTS[c])]
        if self.honour_acrs and satisfied:
            claims["acrs"] = satisfied
        header: dict[str, Any] = {"typ": "JWT"}
        if self.id_token_hook is not None:
            changed = self.id_token_hook(header, claims)
            if isinstance(changed, str):
                return changed
            header, claims = changed
        return self.sign(header, claims)

    def _login_page(self, rid: str, q: dict[str, str], note: str = "") -> Response:
        users = "".join(f'<option value="{escape(u.username)}">{escape(u.name or u.username)}'
                        f"</option>" for u in self.users.values() if u.active)
        choices = (("pwd", "Password"), ("mfa", "Password and one-time code"),
                   ("phr", "Passkey"))
        methods = "".join(
            f'<label><input type="radio" name="method" value="{m}"'
            f'{" checked" if m == "pwd" else ""}> {label}</label><br>' for m, label in choices)
        wanted = escape(q.get("acr_values", "")) or "any"
        html = (f"<!doctype html><title>Demo identity provider</title>"
                f"<h1>Demo identity provider</h1><p>{escape(note)}</p>"
                f"<p>Requested: acr {wanted}, auth context "
                f"{escape(' '.join(self._requested_contexts(q))) or '-'}, "
                f"max_age {escape(q.get('max_age', '-'))}, "
                f"prompt {escape(q.get('prompt', '-'))}</p>"
                f'<form method="post" action="/login"><input type="hidden" name="rid" '
                f'value="{rid}"><label>User <select name="username">{users}</select></label>'
                f"<fieldset><legend>How you sign in</legend>{methods}</fieldset>"
                f'<button type="submit">Sign in</button></form>')
        return HTMLResponse(html)


def _rank(method: str) -> int:
    return METHODS[method][2]


class ThreadServer:
    """Serve an ASGI application (e.g. `DemoIdp.app`) with uvicorn in a thread on
    127.0.0.1:`port`."""

    def __init__(self, app: Any, port: int, *,
                 lifespan: Literal["auto", "on", "off"] = "off") -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="asgi-server", daemon=True)

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
