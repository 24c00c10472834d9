"""Sign-in pages: the login form (a password, a passkey, or an identity provider's button), its
submission, passkey sign-in's JSON calls and sign-out."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.service.accounts import Accounts
from stepguard.service.passkey_sign_in import PasskeySignIn
from stepguard.web.page import PRE_SESSION_COOKIE, Flash, Pages
from stepguard.web.render import N_
from stepguard.web.security import CsrfRejected
from stepguard.web.text import throttle_text


class SignInPages:
    """The sign-in form (a password, or a passkey: a button and conditional UI autofill; the
    identity providers' buttons), passkey sign-in's JSON calls, and sign-out."""

    def __init__(self, pages: Pages, accounts: Accounts) -> None:
        self.pages, self.accounts = pages, accounts
        self.passkeys = PasskeySignIn(accounts)

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login_submit, methods=["POST"]),
            Route("/login/passkey/begin", self.passkey_begin, methods=["POST"]),
            Route("/login/passkey/finish", self.passkey_finish, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]

    async def login_page(self, request: Request) -> Response:
        rd = self.pages.safe(request.query_params.get("rd"))
        flash = self.pages.flash(request)
        if flash is not None and "challenge" in flash.fields:
            flash = None  # a step-up page's outcome, never shown here
        return self.pages.page(
            request,
            "login.html",
            status=flash.status if flash else 200,
            action_url=f"/login?rd={quote(rd, safe='')}",
            passkey_begin_url="/login/passkey/begin",
            passkey_finish_url=f"/login/passkey/finish?rd={quote(rd, safe='')}",
            challenge_id="",
            reasons=[] if flash else [N_("Sign in to continue.")],
            error=flash.error if flash else None,
            username=flash.fields.get("username", "") if flash else "",
            **self.sign_in_options(rd),
        )

    def sign_in_options(self, rd: str) -> dict[str, Any]:
        """The identity providers' buttons (set by `web.oidc`) and the password form switch."""
        buttons = [{**b, "action": f"{b['action']}?rd={quote(rd, safe='')}"}
                   for b in self.pages.provider_buttons]
        return {"providers": buttons, "passwords": self.pages.rt.config.oidc.passwords}

    async def login_submit(self, request: Request) -> Response:
        pages = self.pages
        rd = pages.safe(request.query_params.get("rd"))
        try:
            form = await pages.form(request, None)
        except CsrfRejected:
            return pages.message(
                request, N_("Request refused"), N_("The form expired. Please try again."), 403
            )
        username = form.get("username", "")
        if not pages.rt.config.oidc.passwords:  # no password was checked: answered directly
            return pages.page(request, "login.html", status=403,
                              action_url=f"/login?rd={quote(rd, safe='')}", challenge_id="",
                              reasons=[], error=N_("Sign in with your identity provider."),
                              **self.sign_in_options(rd))
        context = pages.sign_in_context(request)
        try:
            signed = await run_in_threadpool(
                self.accounts.sign_in, username, form.get("password", ""), context
            )
        except Throttled as exc:
            text = throttle_text(exc, self.pages.language(request))
            return self._login_error(rd, text, 429, username)
        except VerificationFailed:
            return self._login_error(rd,
                                     N_("The username or password is not right."), 401, username)
        return pages.signed_in_response(request, rd, signed.token, context)

    # ------------------------------------------------------------------ passkey sign-in

    async def passkey_begin(self, request: Request) -> Response:
        pre = request.cookies.get(PRE_SESSION_COOKIE, "")
        try:
            self.pages.check_header_csrf(request, pre)
            options, ceremony = await run_in_threadpool(self.passkeys.begin, pre)
        except CsrfRejected:
            return JSONResponse({"error": N_("The page expired. Reload and try again.")}, 403)
        except VerificationFailed as exc:
            return JSONResponse({"error": exc.reason}, 400)
        return JSONResponse({"publicKey": json.loads(options), "ceremony": ceremony})

    async def passkey_finish(self, request: Request) -> Response:
        pages, rd = self.pages, self.pages.safe(request.query_params.get("rd"))
        pre = request.cookies.get(PRE_SESSION_COOKIE, "")
        try:
            pages.check_header_csrf(request, pre)
            payload = json.loads(await request.body() or b"{}")
            if not isinstance(payload, dict) or not isinstance(payload.get("credential"), dict):
                raise ValueError("not a passkey answer")
            ceremony = str(payload.get("ceremony", ""))
            credential = json.dumps(payload["credential"])
        except CsrfRejected:
            return JSONResponse({"error": N_("The page expired. Reload and try again.")}, 403)
        except ValueError:
            return JSONResponse({"error": N_("The passkey answer was not readable.")}, 400)
        context = pages.sign_in_context(request)
        try:
            signed = await run_in_threadpool(
                self.passkeys.finish, pre, ceremony, credential, context)
        except Throttled as exc:
            return JSONResponse({"error": throttle_text(exc, self.pages.language(request))}, 429)
        except VerificationFailed as exc:
            return JSONResponse({"error": exc.reason}, 400)
        return pages.signed_in_response(request, rd, signed.token, context,
                                        JSONResponse({"redirect": rd}))

    def _login_error(self, rd: str, error: str, status: int, username: str) -> Response:
        """Post/redirect/get: a refresh shows the error again, never re-sends the password."""
        return self.pages.flash_redirect(
            f"/login?rd={quote(rd, safe='')}",
            Flash(error, status, {"username": username[:200]}),
        )

    async def logout(self, request: Request) -> Response:
        pages = self.pages
        found = await pages.session(request)
        if found:
            try:
                await pages.form(request, found[0])
            except CsrfRejected:
                return pages.message(request, N_("Request refused"), N_("Please try again."), 403)
            await run_in_threadpool(self.accounts.sign_out, found[0])
        after = await run_in_threadpool(pages.provider_logout, found[0]) if found else ""
        response = RedirectResponse(after or "/login", 303)
        response.delete_cookie(
            pages.cookie_name, path="/", domain=pages.cookie_kwargs.get("domain")
        )
        return response
