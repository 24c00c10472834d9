"""Sign-in pages: the login form, its submission and sign-out."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.service.accounts import Accounts
from stepguard.web.page import Pages
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
        return self.pages.page(
            request,
            "login.html",
            action_url=f"/login?rd={quote(rd, safe='')}",
            challenge_id="",
            reasons=["Sign in to continue."],
            error=None,
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
                request, "Request refused", "The form expired. Please try again.", 403
            )
        if not pages.rt.config.oidc.passwords:
            return self._login_error(request, rd, "Sign in with your identity provider.", 403)
        context = pages.sign_in_context(request)
        try:
            signed = await run_in_threadpool(
                self.accounts.sign_in, form.get("username", ""), form.get("password", ""), context
            )
        except Throttled as exc:
            return self._login_error(request, rd, throttle_text(exc), 429)
        except VerificationFailed:
            return self._login_error(request, rd, "The username or password is not right.", 401)
        return pages.signed_in_response(request, rd, signed.token, context)

    def _login_error(self, request: Request, rd: str, error: str, status: int) -> Response:
        return self.pages.page(
            request,
            "login.html",
            action_url=f"/login?rd={quote(rd, safe='')}",
            challenge_id="",
            reasons=[],
            error=error,
            status=status,
            **self.sign_in_options(rd),
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
        after = await run_in_threadpool(pages.provider_logout, found[0]) if found else ""
        response = RedirectResponse(after or "/login", 303)
        response.delete_cookie(
            pages.cookie_name, path="/", domain=pages.cookie_kwargs.get("domain")
        )
        return response
