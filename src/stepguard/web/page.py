"""The portal's page helper: what every page module shares — who is signed in, the request
context, rendering with a CSRF token, the CSRF-checked form, messages, cookies and return URLs.

The page modules (`signin`, `step_up`, `account`, `admin`) hold one `Pages` each and translate
HTTP to the service layer; store and argon2 work runs in threads so the event loop never waits.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from stepguard.adapters.cookies import DEVICE_COOKIE, DeviceCookies, SessionCookie
from stepguard.adapters.http_context import TrustedProxies
from stepguard.core.context import RequestContext
from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.service.accounts import NeedsFreshProof
from stepguard.service.guard import Guard
from stepguard.service.runtime import Runtime, new_id, sign, unsign
from stepguard.service.stepup import ChallengeGone
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.web import i18n, js_texts
from stepguard.web.render import N_, Renderer
from stepguard.web.security import (
    CsrfRejected,
    check_csrf,
    cookie_attributes,
    csrf_token,
    safe_return_url,
)
from stepguard.web.text import throttle_text

PRE_SESSION_COOKIE = "stepguard_pre"
# Page texts made in Python (handlers' messages, flashes): translated when the page is drawn.
TRANSLATED_KEYS = ("heading", "message", "error", "flash")
FLASH_COOKIE = "stepguard_flash"
FLASH_SECONDS = 60
SignedInPair = tuple[SessionRecord, UserRecord]
JsonCall = Callable[[SessionRecord, UserRecord, bytes], Response]


@dataclass(frozen=True)
class Flash:
    """A failed form's outcome, carried over its redirect to a fresh GET (post/redirect/get):
    the error, the status the page answers with, and the fields to keep (never a secret)."""

    error: str
    status: int
    fields: dict[str, str] = field(default_factory=dict)


class Pages:
    """Shared page plumbing for one application (one instance, built from the runtime)."""

    def __init__(self, runtime: Runtime, guard: Guard) -> None:
        self.rt, self.guard = runtime, guard
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
        # Set by `web.oidc.OidcPages` when identity providers are configured.
        self.provider_buttons: list[dict[str, str]] = []
        self.provider_logout: Callable[[SessionRecord], str] = lambda _session: ""
        self.content_security_policy = ""  # "" = the default (security_headers)

    # ------------------------------------------------------------------ the request

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

    async def session(self, request: Request) -> SignedInPair | None:
        return await run_in_threadpool(self.guard.session_for, self.token(request))

    async def signed_in(self, request: Request) -> SignedInPair | Response:
        """The session and user, or a redirect to sign in and come back here."""
        found = await self.session(request)
        if found is None:
            return RedirectResponse(f"/login?rd={quote(request.url.path, safe='')}", 303)
        return found

    def language(self, request: Request) -> str:
        """This page's language: `?lang=`, else the remembered switch, else Accept-Language."""
        return i18n.choose(request.query_params.get("lang"),
                           request.cookies.get(i18n.LANGUAGE_COOKIE),
                           request.headers.get("accept-language"))

    def say(self, request: Request, message: str) -> str:
        """`message` in this request's language (for JSON answers made in Python)."""
        return i18n.gettext(self.language(request), message)

    def translator(self, request: Request) -> Callable[[str], str]:
        """Exact-text translation into this request's language (unknown texts pass through)."""
        language = self.language(request)
        return lambda message: i18n.gettext(language, message)

    def flash_redirect(self, url: str, flash: Flash) -> Response:
        """303 to `url`, which shows `flash` once (a signed, short-lived, HttpOnly cookie)."""
        payload = json.dumps({"e": flash.error, "s": flash.status, "f": flash.fields})
        value = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        response = RedirectResponse(url, 303)
        response.set_cookie(FLASH_COOKIE, sign(self.rt.cookie_key, "flash:" + value),
                            max_age=FLASH_SECONDS, httponly=True, secure=self.https,
                            samesite="strict", path="/")
        return response

    def flash(self, request: Request) -> Flash | None:
        """The flash this GET shows (forged, garbled or absent: None)."""
        value = unsign(self.rt.cookie_key, request.cookies.get(FLASH_COOKIE))
        if not value.startswith("flash:"):
            return None
        try:
            raw = value.removeprefix("flash:")
            data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            fields = {str(k): str(v)[:200] for k, v in dict(data.get("f", {})).items()}
            status = int(data["s"])
            return Flash(str(data["e"]), status if 400 <= status < 500 else 400, fields)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            return None

    def binding(self, request: Request, session: SessionRecord | None) -> str:
        return session.id if session else request.cookies.get(PRE_SESSION_COOKIE, "")

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

    def check_header_csrf(self, request: Request, binding: str) -> None:
        """The CSRF check of a JSON call: `X-CSRF-Token` for `binding`, and Origin/Referer."""
        check_csrf(
            key=self.rt.cookie_key,
            session_binding=binding,
            token=request.headers.get("x-csrf-token"),
            origin=request.headers.get("origin"),
            referer=request.headers.get("referer"),
            allowed_origins=self.origins,
        )

    async def json_call(self, request: Request, call: JsonCall) -> Response:
        """A signed-in JSON call (the CSRF token in `X-CSRF-Token`), errors as JSON."""
        found = await self.session(request)
        if found is None:
            return JSONResponse({"error": self.say(request, N_("Sign in first."))}, 401)
        session, user = found
        try:
            self.check_header_csrf(request, session.id)
            body = await request.body()
            return await run_in_threadpool(call, session, user, body)
        except CsrfRejected:
            return JSONResponse(
                {"error": self.say(request, N_("The page expired. Reload and try again."))}, 403)
        except (ChallengeGone, NeedsFreshProof) as exc:
            return JSONResponse({"error": self.say(request, str(exc))}, 410)
        except Throttled as exc:
            return JSONResponse({"error": throttle_text(exc, self.language(request))}, 429)
        except VerificationFailed as exc:
            return JSONResponse({"error": self.say(request, exc.reason)}, 400)
        except ValueError:  # client input the call could not read (not UTF-8, not JSON)
            return JSONResponse(
                {"error": self.say(request, N_("The answer was not readable."))}, 400)

    # ------------------------------------------------------------------ the answer

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
        language = self.language(request)
        html = self.renderer.render(
            name, csrf_token=token, user=who, language=language,
            language_links=language_links(request, language), js_texts=js_texts.texts(language),
            **i18n.translated(language, context, TRANSLATED_KEYS))
        response = HTMLResponse(html, status, headers={"Content-Language": language})
        if request.query_params.get("lang") in i18n.LANGUAGES:  # the switch: remembered
            response.set_cookie(i18n.LANGUAGE_COOKIE, language, max_age=365 * 86400,
                                httponly=True, secure=self.https, samesite="lax", path="/")
        if FLASH_COOKIE in request.cookies:  # shown once
            response.delete_cookie(FLASH_COOKIE, path="/")
        if self.content_security_policy:
            response.headers["Content-Security-Policy"] = self.content_security_policy
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
            link=link or {"href": "/account", "text": N_("Go to your account")},
            status=status,
        )

    def sign_in_context(self, request: Request) -> RequestContext:
        """The request's context, with a new device id when the browser has none yet (named now,
        so that this very sign-in already records the device)."""
        context = self.context(request)
        return context if context.device_id else replace(context, device_id=new_id())

    def signed_in_response(self, request: Request, rd: str, token: str,
                           context: RequestContext, answer: Response | None = None) -> Response:
        """After a sign-in: the session cookie, and the device cookie for a new device, on
        `answer` (default: a redirect to `rd`; passkey sign-in answers JSON)."""
        response = self.with_token(answer or RedirectResponse(rd, 303), token)
        response.delete_cookie(PRE_SESSION_COOKIE, path="/")
        if not self.devices.device_id(request.cookies.get(DEVICE_COOKIE)):
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

    def with_token(self, response: Response, token: str) -> Response:
        response.set_cookie(self.cookie_name, token, **self.cookie_kwargs)
        return response

    def safe(self, url: str | None, default: str = "/account") -> str:
        return safe_return_url(url, protected_domains=self._domains(), default=default)

    def _domains(self) -> list[str]:
        public = urlsplit(self.rt.config.server.public_url).netloc
        return [*self.rt.config.portal.protected_domains, public]


def language_links(request: Request, current: str) -> list[dict[str, object]]:
    """The language switch: this page in each language (GET pages; the choice is remembered)."""
    links = []
    for code, name in i18n.LANGUAGES.items():
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
        href = request.url.path + "?" + urlencode([*query, ("lang", code)])
        links.append({"code": code, "name": name, "href": href, "current": code == current})
    return links
