"""Portal pages for identity providers: start a sign-in or a step-up at a provider, its callback,
and the provider's back-channel logout endpoint.

The flow cookie holds a random value whose hash the stored flow keeps: a callback is accepted
only from the browser that started it. It is `SameSite=Lax` (the callback is a top-level GET
from the provider's site) and `__Host-` on https.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepguard.core.errors import CsrfRejected, IssuerUnavailable
from stepguard.service.idp import IdentityProviders, SignedInAt
from stepguard.service.oidc import OidcRefused
from stepguard.service.stepup import ChallengeGone
from stepguard.storage.records import SessionRecord
from stepguard.web.portal import Portal
from stepguard.web.security import CONTENT_SECURITY_POLICY

FLOW_COOKIE = "stepguard_oidc"
_CALLBACK_PARAMS = ("code", "state", "iss", "error", "error_description")
_MAX_LOGOUT_BODY = 32 * 1024


class OidcPages:
    def __init__(self, portal: Portal, providers: IdentityProviders) -> None:
        self.pages, self.step_up_pages, self.providers = portal.pages, portal.step_up, providers
        self.cookie = f"__Host-{FLOW_COOKIE}" if self.pages.https else FLOW_COOKIE
        self.pages.provider_buttons = providers.buttons()
        self.pages.provider_logout = self._logout_url
        self.pages.content_security_policy = content_security_policy(providers)

    def routes(self) -> list[Route]:
        return [
            Route("/oidc/{provider}/start", self.start, methods=["POST"]),
            Route("/oidc/{provider}/callback", self.callback, methods=["GET"]),
            Route("/oidc/{provider}/backchannel-logout", self.backchannel_logout,
                  methods=["POST"]),
            Route("/step-up/{cid}/idp", self.step_up, methods=["POST"]),
        ]

    async def start(self, request: Request) -> Response:
        rd = self.pages.safe(request.query_params.get("rd"))
        try:
            await self.pages.form(request, None)
            started = await run_in_threadpool(
                self.providers.begin_login, request.path_params["provider"], return_url=rd,
                browser=request.cookies.get(self.cookie, ""))
        except CsrfRejected:
            return self.pages.message(request, "Request refused",
                                       "The form expired. Please try again.", 403)
        except OidcRefused as exc:
            return self.pages.message(request, "Sign-in refused", exc.reason, 404)
        return self._to_provider(started.url, started.browser)

    async def step_up(self, request: Request) -> Response:
        found = await self.pages.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse(f"/login?rd={quote('/step-up/' + cid, safe='')}", 303)
        try:
            await self.pages.form(request, found[0])
            started = await run_in_threadpool(
                lambda: self.providers.begin_step_up(
                    cid, found[0], browser=request.cookies.get(self.cookie, "")))
        except CsrfRejected:
            return self.pages.message(request, "Request refused", "The form expired.", 403)
        except ChallengeGone as exc:
            return self.pages.message(request, "Confirmation expired", str(exc), 410)
        except OidcRefused as exc:
            return self.pages.message(request, "Not possible here", exc.reason, 403)
        return self._to_provider(started.url, started.browser)

    async def callback(self, request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if k in _CALLBACK_PARAMS}
        if len(request.query_params.getlist("state")) > 1 or len(
                request.query_params.getlist("code")) > 1:
            return self.pages.message(request, "Sign-in refused",
                                       "The sign-in answer is ambiguous.", 400)
        found = await self.pages.session(request)
        session = found[0] if found else None
        context = self.pages.sign_in_context(request)
        try:
            done = await run_in_threadpool(
                lambda: self.providers.finish(
                    request.path_params["provider"], params,
                    browser=request.cookies.get(self.cookie, ""), context=context,
                    session=session))
        except OidcRefused as exc:
            return self.pages.message(request, "Sign-in refused", exc.reason, 403,
                                       link={"href": "/login", "text": "Sign in again"})
        except IssuerUnavailable:
            return self.pages.message(request, "Identity provider unavailable",
                                       "The identity provider could not be reached. Try again "
                                       "shortly.", 503)
        if isinstance(done, SignedInAt):
            return self.pages.signed_in_response(request, self.pages.safe(done.return_url),
                                                 done.signed.token, context)
        return self.step_up_pages.after_pass(done)

    async def backchannel_logout(self, request: Request) -> Response:
        """OpenID Connect Back-Channel Logout 1.0: 200 when done, 400 with an error otherwise;
        never cached. No CSRF token: the logout token's signature is the authentication."""
        headers = {"Cache-Control": "no-store"}
        body = await _bounded_body(request)
        if body is None or not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            return JSONResponse({"error": "invalid_request"}, 400, headers=headers)
        try:
            form = parse_qs(body.decode("ascii"), strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return JSONResponse({"error": "invalid_request"}, 400, headers=headers)
        tokens = form.get("logout_token", [])
        if len(tokens) != 1:
            return JSONResponse({"error": "invalid_request"}, 400, headers=headers)
        try:
            await run_in_threadpool(self.providers.backchannel_logout,
                                    request.path_params["provider"], tokens[0])
        except OidcRefused as exc:
            return JSONResponse({"error": "invalid_request", "error_description": exc.reason},
                                400, headers=headers)
        return Response(status_code=200, headers=headers)

    def _to_provider(self, url: str, browser: str) -> Response:
        response = RedirectResponse(url, 303)
        response.set_cookie(self.cookie, browser, max_age=int(
            self.pages.rt.config.oidc.flow_ttl), httponly=True, secure=self.pages.https,
            samesite="lax", path="/")
        return response

    def _logout_url(self, session: SessionRecord) -> str:
        after = self.pages.rt.config.server.public_url.rstrip("/") + "/login"
        return self.providers.logout_url(session, after=after)


def content_security_policy(providers: IdentityProviders) -> str:
    """The portal's policy, with `form-action` widened to the providers' authorization and
    end-session endpoints: browsers apply `form-action` to the redirect that follows a form
    (the sign-in button, the step-up button, sign-out), so 'self' alone would stop them."""
    origins = sorted({_origin(url) for client in providers.clients.values()
                      for url in (client.metadata.authorization_endpoint,
                                  client.metadata.end_session_endpoint) if url})
    return CONTENT_SECURITY_POLICY.replace("form-action 'self'",
                                           " ".join(["form-action 'self'", *origins]))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _bounded_body(request: Request) -> bytes | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_LOGOUT_BODY:
            return None
    return body
