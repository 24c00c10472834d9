"""Sign-in pages: the login form, its submission and sign-out."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from stepguard.adapters.cookies import DEVICE_COOKIE
from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import new_id, sign
from stepguard.web.page import PRE_SESSION_COOKIE, Flash, Pages
from stepguard.web.security import CsrfRejected
from stepguard.web.text import throttle_text


class SignInPages:
    def __init__(self, pages: Pages, accounts: Accounts) -> None:
        self.pages, self.accounts = pages, accounts

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login_submit, methods=["POST"]),
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
            challenge_id="",
            reasons=[] if flash else ["Sign in to continue."],
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
                request, "Request refused", "The form expired. Please try again.", 403
            )
        context = pages.context(request)
        new_device = not context.device_id
        if new_device:  # named now, so that this very sign-in already records the device
            context = replace(context, device_id=new_id())
        username = form.get("username", "")
        try:
            signed = await run_in_threadpool(
                self.accounts.sign_in, username, form.get("password", ""), context
            )
        except Throttled as exc:
            return self._login_error(rd, throttle_text(exc), 429, username)
        except VerificationFailed:
            return self._login_error(rd, "The username or password is not right.", 401, username)
        response = pages.with_token(RedirectResponse(rd, 303), signed.token)
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
                return pages.message(request, "Request refused", "Please try again.", 403)
            await run_in_threadpool(self.accounts.sign_out, found[0])
        response = RedirectResponse("/login", 303)
        response.delete_cookie(
            pages.cookie_name, path="/", domain=pages.cookie_kwargs.get("domain")
        )
        return response
