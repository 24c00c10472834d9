"""Sign-in pages: the login form, its submission and sign-out."""

from __future__ import annotations

import json
from dataclasses import replace
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepguard.adapters.cookies import DEVICE_COOKIE
from stepguard.core.context import RequestContext
from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.service.accounts import Accounts, SignedIn
from stepguard.service.passkey_sign_in import PasskeySignIn
from stepguard.service.runtime import new_id, sign
from stepguard.web.page import PRE_SESSION_COOKIE, Flash, Pages
from stepguard.web.render import N_
from stepguard.web.security import CsrfRejected
from stepguard.web.text import throttle_text


class SignInPages:
    """The sign-in form (a password, or a passkey: a button and conditional UI autofill),
    passkey sign-in's JSON calls, and sign-out."""

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
        )

    async def login_submit(self, request: Request) -> Response:
        pages = self.pages
        rd = pages.safe(request.query_params.get("rd"))
        try:
            form = await pages.form(request, None)
        except CsrfRejected:
            return pages.message(
                request, N_("Request refused"), N_("The form expired. Please try again."), 403
            )
        context, new_device = self._device_context(request)
        username = form.get("username", "")
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
        return self._signed_in(RedirectResponse(rd, 303), signed, context, new_device)

    def _device_context(self, request: Request) -> tuple[RequestContext, bool]:
        """The request context; a browser without a device cookie gets its device id now, so
        that this very sign-in already records the device."""
        context = self.pages.context(request)
        if context.device_id:
            return context, False
        return replace(context, device_id=new_id()), True

    def _signed_in(self, response: Response, signed: SignedIn, context: RequestContext,
                   new_device: bool) -> Response:
        pages = self.pages
        pages.with_token(response, signed.token)
        response.delete_cookie(PRE_SESSION_COOKIE, path="/")
        if new_device:
            response.set_cookie(
                DEVICE_COOKIE,
                sign(pages.rt.cookie_key, context.device_id),
                max_age=400 * 86400,
                httponly=True,
                secure=pages.https,
                samesite="lax",
                path="/",
            )
        return response

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
        context, new_device = self._device_context(request)
        try:
            signed = await run_in_threadpool(
                self.passkeys.finish, pre, ceremony, credential, context)
        except Throttled as exc:
            return JSONResponse({"error": throttle_text(exc, self.pages.language(request))}, 429)
        except VerificationFailed as exc:
            return JSONResponse({"error": exc.reason}, 400)
        return self._signed_in(JSONResponse({"redirect": rd}), signed, context, new_device)

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
        response = RedirectResponse("/login", 303)
        response.delete_cookie(
            pages.cookie_name, path="/", domain=pages.cookie_kwargs.get("domain")
        )
        return response
