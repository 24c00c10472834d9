"""The portal: sign-in, step-up, account and admin pages (Jinja2, no front-end build).

Handlers translate HTTP to the service layer and back; the service does the work in threads so the
event loop never waits on the store or argon2.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepguard.adapters.cookies import DEVICE_COOKIE, DeviceCookies, SessionCookie
from stepguard.adapters.http_context import TrustedProxies
from stepguard.core.context import RequestContext
from stepguard.core.errors import StepguardError, Throttled, VerificationFailed
from stepguard.service.accounts import Accounts, NeedsFreshProof
from stepguard.service.guard import Guard
from stepguard.service.push_devices import PushDevices
from stepguard.service.runtime import Runtime, new_id, sign
from stepguard.service.stepup import ChallengeGone, Passed, StepUp
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.web.db_tokens import DbTokenPages
from stepguard.web.render import Renderer
from stepguard.web.security import (
    CsrfRejected,
    check_csrf,
    cookie_attributes,
    csrf_token,
    safe_return_url,
)

PRE_SESSION_COOKIE = "stepguard_pre"
Handler = Callable[[Request], Awaitable[Response]]


class Portal:
    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp, accounts: Accounts) -> None:
        self.rt, self.guard, self.stepup, self.accounts = runtime, guard, stepup, accounts
        self.push_devices = PushDevices(accounts)
        self.renderer = Renderer(title=runtime.config.portal.title)
        self.https = runtime.config.server.public_url.startswith("https://")
        self.cookie_name, self.cookie_kwargs = cookie_attributes(
            name=runtime.config.session.cookie_name,
            https=self.https,
            domain=runtime.config.session.cookie_domain,
        )
        self.session_cookie = SessionCookie.of(runtime.config)  # the names it reads back
        self.devices = DeviceCookies(runtime.cookie_key)
        self.proxies = TrustedProxies.parse(runtime.config.server.trusted_proxies)
        origin = urlsplit(runtime.config.server.public_url)
        self.origins = [
            f"{origin.scheme}://{origin.netloc}",
            *[o.rstrip("/") for o in runtime.config.webauthn.origins],
        ]

    # ------------------------------------------------------------------ plumbing

    def routes(self) -> list[Route]:
        r = Route
        return [
            r("/login", self.login_page, methods=["GET"]),
            r("/login", self.login_submit, methods=["POST"]),
            r("/logout", self.logout, methods=["POST"]),
            r("/step-up/{cid}", self.step_up_page, methods=["GET"]),
            r("/step-up/{cid}/totp", self.step_up_totp, methods=["POST"]),
            r("/step-up/{cid}/recovery", self.step_up_recovery, methods=["POST"]),
            r("/step-up/{cid}/webauthn/begin", self.webauthn_begin, methods=["POST"]),
            r("/step-up/{cid}/webauthn/finish", self.webauthn_finish, methods=["POST"]),
            r("/step-up/{cid}/push", self.push_start, methods=["POST"]),
            r("/step-up/{cid}/push/status", self.push_status, methods=["GET"]),
            r("/step-up/{cid}/confirm", self.confirm_page, methods=["GET"]),
            r("/step-up/{cid}/confirm", self.confirm_held, methods=["POST"]),
            r("/account", self.account_page, methods=["GET"]),
            r("/account/sessions/revoke", self.revoke_session, methods=["POST"]),
            r("/account/factors/remove", self.remove_factor, methods=["POST"]),
            r("/account/totp", self.totp_begin, methods=["GET"]),
            r("/account/totp", self.totp_confirm, methods=["POST"]),
            r("/account/passkey", self.passkey_page, methods=["GET"]),
            r("/account/passkey/begin", self.passkey_begin, methods=["POST"]),
            r("/account/passkey/finish", self.passkey_finish, methods=["POST"]),
            r("/account/recovery", self.recovery_regenerate, methods=["POST"]),
            r("/account/push-device", self.push_device_page, methods=["GET"]),
            r("/account/push-device/begin", self.push_device_begin, methods=["POST"]),
            r("/account/push-device/finish", self.push_device_finish, methods=["POST"]),
            r("/account/push/{pid}", self.push_page, methods=["GET"]),
            r("/account/push/{pid}", self.push_answer, methods=["POST"]),
            r("/admin", self.admin_page, methods=["GET"]),
            r("/admin/sessions/revoke", self.admin_revoke, methods=["POST"]),
            r("/admin/users/disable", self.admin_disable, methods=["POST"]),
            r("/admin/users/unlock", self.admin_unlock, methods=["POST"]),
            *DbTokenPages(self).routes(),
        ]

    def client_ip(self, request: Request) -> str:
        peer = request.client.host if request.client else ""
        return self.proxies.client_ip(peer, request.headers.get("x-forwarded-for"))

    def context(self, request: Request) -> RequestContext:
        return RequestContext(
            method=request.method,
            host=request.url.hostname or "",
            path=request.url.path,
            client_ip=self.client_ip(request),
            user_agent=request.headers.get("user-agent", "")[:512],
            device_id=self.devices.device_id(request.cookies.get(DEVICE_COOKIE)),
        )

    def token(self, request: Request) -> str | None:
        return self.session_cookie.token(request.cookies)

    async def session(self, request: Request) -> tuple[SessionRecord, UserRecord] | None:
        return await run_in_threadpool(self.guard.session_for, self.token(request))

    def binding(self, request: Request, session: SessionRecord | None) -> str:
        return session.id if session else request.cookies.get(PRE_SESSION_COOKIE, "")

    def page(
        self,
        request: Request,
        name: str,
        session: SessionRecord | None = None,
        user: UserRecord | None = None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        binding = self.binding(request, session)
        fresh = not binding
        if fresh:
            binding = secrets.token_urlsafe(24)
        token = csrf_token(key=self.rt.cookie_key, session_binding=binding)
        who = {"name": user.display_name or user.username, "email": user.email} if user else None
        html = self.renderer.render(name, csrf_token=token, user=who, **context)
        response = HTMLResponse(html, status)
        if fresh:
            response.set_cookie(
                PRE_SESSION_COOKIE,
                binding,
                httponly=True,
                samesite="strict",
                secure=self.https,
                path="/",
            )
        return response

    async def form(self, request: Request, session: SessionRecord | None) -> dict[str, str]:
        """The POSTed form, after the CSRF check (token + Origin/Referer)."""
        form = await request.form()
        header_token = request.headers.get("x-csrf-token")
        check_csrf(
            key=self.rt.cookie_key,
            session_binding=self.binding(request, session),
            token=str(form.get("csrf_token") or header_token or ""),
            origin=request.headers.get("origin"),
            referer=request.headers.get("referer"),
            allowed_origins=self.origins,
        )
        return {k: str(v) for k, v in form.items() if isinstance(v, str)}

    def message(
        self,
        request: Request,
        heading: str,
        message: str,
        status: int,
        link: dict[str, str] | None = None,
    ) -> HTMLResponse:
        return self.page(
            request,
            "message.html",
            heading=heading,
            message=message,
            link=link or {"href": "/account", "text": "Go to your account"},
            status=status,
        )

    def with_token(self, response: Response, token: str) -> Response:
        response.set_cookie(self.cookie_name, token, **self.cookie_kwargs)
        return response

    def safe(self, url: str | None, default: str = "/account") -> str:
        return safe_return_url(url, protected_domains=self._domains(), default=default)

    def _domains(self) -> list[str]:
        public = urlsplit(self.rt.config.server.public_url).netloc
        return [*self.rt.config.portal.protected_domains, public]

    # ------------------------------------------------------------------ sign-in

    async def login_page(self, request: Request) -> Response:
        rd = self.safe(request.query_params.get("rd"))
        return self.page(
            request,
            "login.html",
            action_url=f"/login?rd={quote(rd, safe='')}",
            challenge_id="",
            reasons=["Sign in to continue."],
            error=None,
        )

    async def login_submit(self, request: Request) -> Response:
        rd = self.safe(request.query_params.get("rd"))
        try:
            form = await self.form(request, None)
        except CsrfRejected:
            return self.message(
                request, "Request refused", "The form expired. Please try again.", 403
            )
        context = self.context(request)
        new_device = not context.device_id
        if new_device:  # named now, so that this very sign-in already records the device
            context = replace(context, device_id=new_id())
        try:
            signed = await run_in_threadpool(
                self.accounts.sign_in, form.get("username", ""), form.get("password", ""), context
            )
        except Throttled as exc:
            return self._login_error(request, rd, _throttle_text(exc), 429)
        except VerificationFailed:
            return self._login_error(request, rd, "The username or password is not right.", 401)
        response = self.with_token(RedirectResponse(rd, 303), signed.token)
        response.delete_cookie(PRE_SESSION_COOKIE, path="/")
        if new_device:
            response.set_cookie(
                DEVICE_COOKIE,
                sign(self.rt.cookie_key, context.device_id),
                max_age=400 * 86400,
                httponly=True,
                secure=self.https,
                samesite="lax",
                path="/",
            )
        return response

    def _login_error(self, request: Request, rd: str, error: str, status: int) -> Response:
        return self.page(
            request,
            "login.html",
            action_url=f"/login?rd={quote(rd, safe='')}",
            challenge_id="",
            reasons=[],
            error=error,
            status=status,
        )

    async def logout(self, request: Request) -> Response:
        found = await self.session(request)
        if found:
            try:
                await self.form(request, found[0])
            except CsrfRejected:
                return self.message(request, "Request refused", "Please try again.", 403)
            await run_in_threadpool(self.accounts.sign_out, found[0])
        response = RedirectResponse("/login", 303)
        response.delete_cookie(self.cookie_name, path="/", domain=self.cookie_kwargs.get("domain"))
        return response

    # ------------------------------------------------------------------ step-up

    async def step_up_page(self, request: Request) -> Response:
        found = await self.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse(f"/login?rd={quote('/step-up/' + cid, safe='')}", 303)
        session, user = found
        try:
            challenge = await run_in_threadpool(self.stepup.live, cid, session)
            methods = await run_in_threadpool(self.stepup.methods_for, challenge, user.id)
            push = await run_in_threadpool(self.stepup.current_push, challenge)
        except ChallengeGone as exc:
            return self.message(request, "Confirmation expired", str(exc), 410)
        return self._step_up(
            request,
            session,
            user,
            challenge,
            methods,
            error=_error_text(request.query_params.get("error")),
            push=push and {
                "number": push.number,
                "expires_in": max(0, int(push.expires - self.rt.now())),
            },
        )

    def _step_up(
        self,
        request: Request,
        session: SessionRecord,
        user: UserRecord,
        challenge: Any,
        methods: list[str],
        error: str | None = None,
        push: Any = None,
        status: int = 200,
    ) -> Response:
        allowed = challenge.requirement.methods or {"webauthn", "totp", "push", "recovery"}
        base = f"/step-up/{challenge.id}"
        view = {
            "id": challenge.id,
            "reasons": list(challenge.reasons),
            "bound_values": list(challenge.bound_values),
            "level_label": challenge.requirement.level.label,
            "methods": methods,
            "not_set_up": [
                m for m in ("webauthn", "totp", "push") if m in allowed and m not in methods
            ],
            "expires_in": max(0, int(challenge.expires - self.rt.now())),
            # Only a request whose body is held is replayed; others are simply retried.
            "held_method": challenge.held_method if challenge.held_body else "GET",
            "return_url": challenge.return_url,
        }
        return self.page(
            request,
            "step_up.html",
            session,
            user,
            status,
            challenge=view,
            error=error,
            push=push,
            totp_url=f"{base}/totp",
            recovery_url=f"{base}/recovery",
            webauthn_begin_url=f"{base}/webauthn/begin",
            webauthn_finish_url=f"{base}/webauthn/finish",
            push_start_url=f"{base}/push",
            push_status_url=f"{base}/push/status",
            account_url="/account",
        )

    async def _verify(
        self, request: Request, method: str, call: Callable[[SessionRecord, dict[str, str]], Passed]
    ) -> Response:
        found = await self.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse("/login", 303)
        session, user = found
        try:
            form = await self.form(request, session)
            passed = await run_in_threadpool(call, session, form)
        except CsrfRejected:
            return self.message(request, "Request refused", "The form expired. Try again.", 403)
        except ChallengeGone as exc:
            return self.message(request, "Confirmation expired", str(exc), 410)
        except Throttled as exc:
            return await self._retry(request, session, user, cid, _throttle_text(exc), 429)
        except VerificationFailed as exc:
            return await self._retry(request, session, user, cid, exc.reason, 401)
        return self._after_pass(request, passed)

    async def _retry(
        self,
        request: Request,
        session: SessionRecord,
        user: UserRecord,
        cid: str,
        error: str,
        status: int,
    ) -> Response:
        try:
            challenge = await run_in_threadpool(self.stepup.live, cid, session)
        except ChallengeGone as exc:
            return self.message(request, "Confirmation expired", str(exc), 410)
        methods = await run_in_threadpool(self.stepup.methods_for, challenge, user.id)
        return self._step_up(request, session, user, challenge, methods, error=error, status=status)

    def _next_url(self, passed: Passed) -> str:
        """After a pass: the confirmation page of a held request, else the return URL."""
        challenge = passed.challenge
        if challenge.held_method not in ("GET", "HEAD") and challenge.held_body:
            return f"/step-up/{challenge.id}/confirm"
        return self.safe(challenge.return_url)

    def _after_pass(self, request: Request, passed: Passed) -> Response:
        return self.with_token(RedirectResponse(self._next_url(passed), 303), passed.token)

    async def confirm_page(self, request: Request) -> Response:
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        challenge = await run_in_threadpool(
            self.rt.store.challenges.get, request.path_params["cid"]
        )
        if challenge is None or challenge.status != "passed" or challenge.session_id != session.id:
            return self.message(request, "Nothing to send", "There is no request to send.", 404)
        held = {
            "method": challenge.held_method,
            "url": self.safe(challenge.return_url),
            "fields": _form_fields(challenge.held_body),
            "size": len(challenge.held_body),
        }
        return self.page(
            request,
            "confirm.html",
            session,
            user,
            held=held,
            confirm_url=f"/step-up/{challenge.id}/confirm",
            cancel_url="/account",
        )

    async def step_up_totp(self, request: Request) -> Response:
        cid, ip = request.path_params["cid"], self.client_ip(request)
        return await self._verify(
            request,
            "totp",
            lambda s, f: self.stepup.verify_totp(cid, s, f.get("code", ""), client_ip=ip),
        )

    async def step_up_recovery(self, request: Request) -> Response:
        cid, ip = request.path_params["cid"], self.client_ip(request)
        return await self._verify(
            request,
            "recovery",
            lambda s, f: self.stepup.verify_recovery(cid, s, f.get("code", ""), client_ip=ip),
        )

    async def _json_call(
        self, request: Request, call: Callable[[SessionRecord, UserRecord, bytes], Any]
    ) -> Response:
        found = await self.session(request)
        if found is None:
            return JSONResponse({"error": "Sign in first."}, 401)
        session, user = found
        try:
            check_csrf(
                key=self.rt.cookie_key,
                session_binding=session.id,
                token=request.headers.get("x-csrf-token"),
                origin=request.headers.get("origin"),
                referer=request.headers.get("referer"),
                allowed_origins=self.origins,
            )
            body = await request.body()
            return await run_in_threadpool(call, session, user, body)
        except CsrfRejected:
            return JSONResponse({"error": "The page expired. Reload and try again."}, 403)
        except (ChallengeGone, NeedsFreshProof) as exc:
            return JSONResponse({"error": str(exc)}, 410)
        except Throttled as exc:
            return JSONResponse({"error": _throttle_text(exc)}, 429)
        except VerificationFailed as exc:
            return JSONResponse({"error": exc.reason}, 400)

    async def webauthn_begin(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        return await self._json_call(
            request,
            lambda s, u, b: Response(
                self.stepup.begin_webauthn(cid, s), media_type="application/json"
            ),
        )

    async def webauthn_finish(self, request: Request) -> Response:
        cid, ip = request.path_params["cid"], self.client_ip(request)

        def finish(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            passed = self.stepup.finish_webauthn(cid, session, body.decode(), client_ip=ip)
            return self._json_pass(request, passed)

        return await self._json_call(request, finish)

    def _json_pass(self, request: Request, passed: Passed) -> Response:
        return self.with_token(JSONResponse({"redirect": self._next_url(passed)}), passed.token)

    async def push_start(self, request: Request) -> Response:
        found = await self.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse("/login", 303)
        session, user = found
        context = self.context(request)
        try:
            await self.form(request, session)
            await run_in_threadpool(
                lambda: self.stepup.start_push(
                    cid, session, client_ip=context.client_ip, user_agent=context.user_agent
                )
            )
        except CsrfRejected:
            return self.message(request, "Request refused", "The form expired. Try again.", 403)
        except ChallengeGone as exc:
            return self.message(request, "Confirmation expired", str(exc), 410)
        except (Throttled, VerificationFailed) as exc:
            text = _throttle_text(exc) if isinstance(exc, Throttled) else exc.reason
            return await self._retry(request, session, user, cid, text, 429)
        return RedirectResponse(f"/step-up/{cid}", 303)  # the page shows the number to pick

    async def push_status(self, request: Request) -> Response:
        found = await self.session(request)
        if found is None:
            return JSONResponse({"status": "signed_out"}, 401)
        cid, ip = request.path_params["cid"], self.client_ip(request)
        try:
            result = await run_in_threadpool(self.stepup.poll_push, cid, found[0], client_ip=ip)
        except ChallengeGone as exc:
            return JSONResponse({"status": "gone", "error": str(exc)}, 410)
        if isinstance(result, Passed):
            return self._json_pass(request, result)
        return JSONResponse({"status": result})

    async def confirm_held(self, request: Request) -> Response:
        """The user confirmed the held request: hand it to the reverse proxy for replay."""
        replay = getattr(request.app.state, "replay", None)
        found = await self.session(request)
        if found is None or replay is None:
            return self.message(request, "Nothing to send", "There is no request to send.", 404)
        try:
            await self.form(request, found[0])
        except CsrfRejected:
            return self.message(request, "Request refused", "The form expired.", 403)
        response: Response = await replay(request, request.path_params["cid"], found[0])
        if response.status_code in (403, 404):
            return self.message(
                request,
                "Not sent",
                "This confirmation no longer covers the "
                "request: it was already sent, or it changed. Start again.",
                response.status_code,
            )
        return response

    # ------------------------------------------------------------------ account

    async def _signed_in(self, request: Request) -> tuple[SessionRecord, UserRecord] | Response:
        found = await self.session(request)
        if found is None:
            return RedirectResponse(f"/login?rd={quote(request.url.path, safe='')}", 303)
        return found

    async def account_page(self, request: Request) -> Response:
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        view = await run_in_threadpool(self._account_view, session, user)
        return self.page(
            request,
            "account.html",
            session,
            user,
            flash=request.query_params.get("m"),
            revoke_url="/account/sessions/revoke",
            remove_factor_url="/account/factors/remove",
            enrol_totp_url="/account/totp",
            enrol_passkey_url="/account/passkey",
            enrol_push_url="/account/push-device",
            recovery_url="/account/recovery",
            logout_url="/logout",
            db_tokens_url="/account/db-tokens" if self.rt.config.postgres.listeners else "",
            **view,
        )

    def _account_view(self, session: SessionRecord, user: UserRecord) -> dict[str, Any]:
        store = self.rt.store
        factors = [
            {
                "id": f.id,
                "kind": f.kind,
                "label": f.label,
                "created_text": _when(f.created),
                "last_used_text": _when(f.last_used) if f.last_used else "never",
            }
            for f in store.factors.for_user(user.id)
            if f.data.get("confirmed", True) and f.kind != "push"
        ]
        push_devices = [
            {
                "id": f.id,
                "label": f.label,
                "browser": describe_browser(str(f.data.get("user_agent", ""))),
                "created_text": _when(f.created),
                "last_used_text": _when(f.last_used) if f.last_used else "never",
            }
            for f in self.stepup.push_devices(user.id)
        ]
        sessions = [
            {
                "id": s.id,
                "current": s.id == session.id,
                "ip": s.ip,
                "user_agent": s.user_agent[:80],
                "created_text": _when(s.created),
                "last_seen_text": _when(s.last_seen),
            }
            for s in store.sessions.list_for_user(user.id)
        ]
        history = store.history.load(user.id)
        devices = [{"id": d[:8] + "…", "last_seen_text": ""} for d in sorted(history.known_devices)]
        events = [
            {
                "at_text": _when(e.at),
                "kind": e.kind,
                "outcome": e.outcome,
                "detail": e.factor or e.rule,
            }
            for e in list(self.rt.audit_log.entries(subject=user.id))[-15:][::-1]
        ]
        pushes = [
            {"id": p.id, "url": f"/account/push/{p.id}"}
            for p, _ in self.stepup.pending_pushes(session)
        ]
        return {
            "factors": factors,
            "sessions": sessions,
            "devices": devices,
            "events": events,
            "pending_pushes": pushes,
            "push_devices": push_devices,
        }

    async def _account_post(
        self, request: Request, action: Callable[[SessionRecord, UserRecord, dict[str, str]], str]
    ) -> Response:
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            form = await self.form(request, session)
            note = await run_in_threadpool(action, session, user, form)
        except CsrfRejected:
            return self.message(request, "Request refused", "The form expired.", 403)
        except NeedsFreshProof as exc:
            return self.message(
                request,
                "Confirm it's you",
                str(exc) + " Sign in again, or confirm with a second factor, then retry.",
                403,
                {"href": "/login?rd=%2Faccount", "text": "Sign in again"},
            )
        return RedirectResponse(f"/account?m={quote(note)}", 303)

    async def revoke_session(self, request: Request) -> Response:
        return await self._account_post(
            request,
            lambda s, u, f: (
                "Session ended."
                if self.accounts.revoke_session(s, f.get("session_id", ""))
                else "No such session."
            ),
        )

    async def remove_factor(self, request: Request) -> Response:
        return await self._account_post(
            request,
            lambda s, u, f: (
                "Removed."
                if self.accounts.remove_factor(s, f.get("factor_id", ""))
                else "Not found."
            ),
        )

    async def confirm_first(
        self,
        request: Request,
        session: SessionRecord,
        user: UserRecord,
        exc: NeedsFreshProof,
        return_to: str,
    ) -> Response:
        """A factor change needs a fresh proof: a step-up (or a fresh sign-in) comes first."""
        challenge = await run_in_threadpool(
            self.accounts.fresh_proof_challenge, session, self.context(request), return_to
        )
        if challenge is None:
            return RedirectResponse(f"/login?rd={quote(return_to, safe='')}", 303)
        return RedirectResponse(f"/step-up/{challenge.id}", 303)

    async def totp_begin(self, request: Request) -> Response:
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            enrolment = await run_in_threadpool(self.accounts.begin_totp, session, user)
        except NeedsFreshProof as exc:
            return await self.confirm_first(request, session, user, exc, "/account/totp")
        return self.page(
            request,
            "enrol_totp.html",
            session,
            user,
            qr_svg=enrolment.svg,
            secret=enrolment.secret,
            otpauth_uri=enrolment.uri,
            confirm_url=f"/account/totp?f={enrolment.factor_id}",
        )

    async def totp_confirm(self, request: Request) -> Response:
        factor_id = request.query_params.get("f", "")

        def confirm(session: SessionRecord, user: UserRecord, form: dict[str, str]) -> str:
            try:
                self.accounts.confirm_totp(session, factor_id, form.get("code", ""))
            except VerificationFailed as exc:
                return f"Authenticator not added: {exc.reason}"
            return "Authenticator app added."

        return await self._account_post(request, confirm)

    async def passkey_page(self, request: Request) -> Response:
        return await self._enrol_page(request, "enrol_passkey.html", "/account/passkey")

    async def _enrol_page(self, request: Request, template: str, path: str) -> Response:
        """An enrolment page behind a fresh proof, with its begin and finish URLs."""
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        try:
            await run_in_threadpool(self.accounts.require_fresh, found[0])
        except NeedsFreshProof as exc:
            return await self.confirm_first(request, found[0], found[1], exc, path)
        return self.page(request, template, *found, begin_url=f"{path}/begin",
                         finish_url=f"{path}/finish")

    async def passkey_begin(self, request: Request) -> Response:
        def begin(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            options, enrolment_id = self.accounts.begin_passkey(session, user)
            response = Response(options, media_type="application/json")
            response.set_cookie(
                "stepguard_enrol",
                enrolment_id,
                httponly=True,
                secure=self.https,
                samesite="strict",
                path="/account/passkey",
            )
            return response

        return await self._json_call(request, begin)

    async def passkey_finish(self, request: Request) -> Response:
        enrolment_id = request.cookies.get("stepguard_enrol", "")

        def finish(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            payload = json.loads(body or b"{}")
            credential = payload.get("credential", payload)
            self.accounts.finish_passkey(
                session, enrolment_id, json.dumps(credential), str(payload.get("label", "Passkey"))
            )
            return JSONResponse({"redirect": "/account?m=Passkey%20added."})

        return await self._json_call(request, finish)

    async def recovery_regenerate(self, request: Request) -> Response:
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            await self.form(request, session)
            codes = await run_in_threadpool(self.accounts.regenerate_recovery_codes, session)
        except CsrfRejected:
            return self.message(request, "Request refused", "The form expired.", 403)
        except NeedsFreshProof as exc:
            return self.message(request, "Confirm it's you", str(exc), 403)
        return self.page(
            request, "recovery_codes.html", session, user, codes=codes, done_url="/account"
        )

    async def push_page(self, request: Request) -> Response:
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        pid = request.path_params["pid"]
        pending = await run_in_threadpool(self.stepup.pending_pushes, session)
        match = [(p, c) for p, c in pending if p.id == pid]
        if not match:
            return self.message(
                request, "Nothing to approve", "This request is no longer pending.", 404
            )
        push, challenge = match[0]
        devices = await run_in_threadpool(self.stepup.push_devices, user.id)
        return self.page(
            request,
            "push_approve.html",
            session,
            user,
            push={
                "id": push.id,
                "options": list(push.options),
                "requested_at": _when(push.created),
                "expires_in": max(0, int(push.expires - self.rt.now())),
                "ip": push.client_ip,
                "location": push.location,
                "browser": describe_browser(push.user_agent),
                "reasons": list(challenge.reasons),
                "bound_values": list(challenge.bound_values),
                "nonce": push.nonce,
                "digest": push.digest,
            },
            devices=[d.id for d in devices],
            answer_url=f"/account/push/{push.id}",
        )

    async def push_answer(self, request: Request) -> Response:
        pid, ip = request.path_params["pid"], self.client_ip(request)

        def answer(session: SessionRecord, user: UserRecord, form: dict[str, str]) -> str:
            try:
                status = self.stepup.answer_push(
                    pid,
                    session,
                    picked=int(form.get("picked", "")),
                    device_id=form.get("device_id", ""),
                    signature=_unb64url(form.get("signature", "")),
                    client_ip=ip,
                )
            except Throttled as exc:
                return f"Not answered: {_throttle_text(exc)}"
            except (ValueError, StepguardError) as exc:
                return f"Not answered: {getattr(exc, 'reason', 'the answer was not readable.')}"
            return "Approved." if status == "approved" else "Refused."

        return await self._account_post(request, answer)

    async def push_device_page(self, request: Request) -> Response:
        return await self._enrol_page(request, "enrol_push.html", "/account/push-device")

    async def push_device_begin(self, request: Request) -> Response:
        def begin(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            enrolment = self.push_devices.begin(session)
            return JSONResponse(
                {"enrolment_id": enrolment.enrolment_id, "nonce": enrolment.nonce}
            )

        return await self._json_call(request, begin)

    async def push_device_finish(self, request: Request) -> Response:
        user_agent = request.headers.get("user-agent", "")

        def finish(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
                fields = {k: str(payload.get(k, "")) for k in
                          ("enrolment_id", "alg", "public_key", "signature", "label")}
                public_key = _unb64url(fields["public_key"])
                signature = _unb64url(fields["signature"])
            except ValueError:
                return JSONResponse({"error": "The device answer was not readable."}, 400)
            device = self.push_devices.finish(
                session,
                enrolment_id=fields["enrolment_id"],
                algorithm=fields["alg"],
                public_key=public_key,
                signature=signature,
                label=fields["label"] or describe_browser(user_agent),
                user_agent=user_agent,
            )
            return JSONResponse(
                {"redirect": "/account?m=Device%20added.", "device_id": device.id}
            )

        return await self._json_call(request, finish)

    # ------------------------------------------------------------------ admin

    async def _admin(self, request: Request) -> tuple[SessionRecord, UserRecord] | Response:
        found = await self._signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        if "admins" not in user.groups:
            return self.message(request, "Not allowed", "The admin console is for admins.", 403)
        context = self.context(request)
        check = await run_in_threadpool(self.guard.check, context, self.token(request))
        if not check.decision.allowed:
            if check.decision.outcome.value == "deny":
                return self.message(request, "Not allowed", " ".join(check.decision.reasons), 403)
            challenge = await run_in_threadpool(
                lambda: self.stepup.start(
                    check.decision, context, session, return_url=str(request.url.path)
                )
            )
            return RedirectResponse(f"/step-up/{challenge.id}", 303)
        return found

    async def admin_page(self, request: Request) -> Response:
        found = await self._admin(request)
        if isinstance(found, Response):
            return found
        q = request.query_params
        filters = {
            "user": q.get("user", ""),
            "rule": q.get("rule", ""),
            "outcome": q.get("outcome", ""),
        }
        view = await run_in_threadpool(self._admin_view, filters)
        return self.page(
            request,
            "admin.html",
            *found,
            filters=filters,
            revoke_url="/admin/sessions/revoke",
            disable_url="/admin/users/disable",
            unlock_url="/admin/users/unlock",
            **view,
        )

    def _admin_view(self, filters: dict[str, str]) -> dict[str, Any]:
        store = self.rt.store
        users = store.users.list(limit=200)
        names = {u.id: u.username for u in users}
        subject = next((u.id for u in users if u.username == filters["user"]), filters["user"])
        entries = list(
            self.rt.audit_log.entries(
                subject=subject or None,
                rule=filters["rule"] or None,
                outcome=filters["outcome"] or None,
            )
        )[-100:][::-1]
        return {
            "users": [
                {
                    "id": u.id,
                    "username": u.username,
                    "display_name": u.display_name,
                    "groups": sorted(u.groups),
                    "disabled": u.disabled,
                    "factor_count": len(store.factors.for_user(u.id)),
                }
                for u in users
            ],
            "sessions": [
                {
                    "id": s.id,
                    "user": names.get(s.user_id, s.user_id),
                    "ip": s.ip,
                    "last_seen_text": _when(s.last_seen),
                }
                for u in users
                for s in store.sessions.list_for_user(u.id)
            ],
            "entries": [
                {
                    "seq": e.seq,
                    "at_text": _when(e.at),
                    "kind": e.kind,
                    "subject": names.get(e.subject, e.subject),
                    "rule": e.rule,
                    "decision": e.decision,
                    "outcome": e.outcome,
                    "factor": e.factor,
                    "reasons": list(e.reasons),
                }
                for e in entries
            ],
        }

    async def admin_revoke(self, request: Request) -> Response:
        found = await self._admin(request)
        if isinstance(found, Response):
            return found
        form = await self.form(request, found[0])
        await run_in_threadpool(
            self.accounts.revoke_session, None, form.get("session_id", ""), admin=found[1].id
        )
        return RedirectResponse("/admin", 303)

    async def admin_disable(self, request: Request) -> Response:
        found = await self._admin(request)
        if isinstance(found, Response):
            return found
        form = await self.form(request, found[0])
        await run_in_threadpool(self.accounts.disable_user, form.get("user_id", ""), by=found[1].id)
        return RedirectResponse("/admin", 303)

    async def admin_unlock(self, request: Request) -> Response:
        """Lift a user's throttle locks: a confirmation page first, then the unlock."""
        found = await self._admin(request)
        if isinstance(found, Response):
            return found
        try:
            form = await self.form(request, found[0])
        except CsrfRejected:
            return self.message(request, "Request refused", "The form expired.", 403)
        user = await run_in_threadpool(self.rt.store.users.get, form.get("user_id", ""))
        if user is None:
            return self.message(request, "No such user", "That user does not exist.", 404)
        if form.get("confirm") != "yes":
            return self.page(request, "admin_unlock.html", *found,
                             account={"id": user.id, "username": user.username},
                             unlock_url="/admin/users/unlock", cancel_url="/admin")
        await run_in_threadpool(self.accounts.unlock, user.id, by=found[1].id)
        return RedirectResponse("/admin", 303)


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"),
             ("Chromium/", "Chromium"), ("Chrome/", "Chrome"), ("Version/", "Safari"))
_SYSTEMS = (("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("Windows", "Windows"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def describe_browser(user_agent: str) -> str:
    """A User-Agent header as "Firefox 128 on Linux"; the raw text (cut) when unknown."""
    name = next(((label, key) for key, label in _BROWSERS if key in user_agent), None)
    system = next((label for key, label in _SYSTEMS if key in user_agent), "")
    if name is None:
        return user_agent[:80]
    label, key = name
    version = user_agent.split(key, 1)[1].split(".", 1)[0].split(" ", 1)[0]
    text = f"{label} {version}" if version.isdigit() else label
    return f"{text} on {system}" if system else text


def _unb64url(text: str) -> bytes:
    """Base64url without padding -> bytes; ValueError when it is not that."""
    if len(text) > 4096 or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _when(at: float | None) -> str:
    if not at:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _throttle_text(exc: Throttled) -> str:
    if exc.locked:
        return "This account is locked after too many failed attempts. Contact your administrator."
    return f"Too many attempts. Try again in {max(1, int(exc.retry_after))} seconds."


def _error_text(code: str | None) -> str | None:
    return {"expired": "That took too long; try again."}.get(code or "")


def _form_fields(body: bytes) -> list[tuple[str, str]]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return []
    hidden = ("password", "csrf", "token", "secret", "code")
    return [(k, "••••" if any(h in k.lower() for h in hidden) else v[:200]) for k, v in pairs][:50]
