"""Step-up pages: the challenge page, each factor's verification, push polling and the
confirmation of a held request (replayed by the reverse proxy through the injected `Replay`)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepguard.adapters.http_context import wants_html
from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.service.stepup import ChallengeGone, Passed, StepUp, delegated
from stepguard.storage.records import ChallengeRecord, SessionRecord, UserRecord
from stepguard.web.agent_calls import agent_call_view
from stepguard.web.inline import InlineFrames
from stepguard.web.page import Flash, Pages
from stepguard.web.render import N_
from stepguard.web.security import CsrfRejected
from stepguard.web.text import (
    bound_view,
    error_text,
    form_fields,
    reasons_in,
    throttle_text,
)

# The reverse proxy's replay of a held request: (request, challenge id, session) -> response.
Replay = Callable[[Request, str, SessionRecord], Awaitable[Response]]
Verify = Callable[[SessionRecord, dict[str, str]], Passed]
ALL_METHODS = frozenset({"webauthn", "totp", "push", "recovery"})


class StepUpPages:
    """The step-up page in two views: the full page, and the embedded view the inline dialog
    frames (`?view=inline&origin=O`, O an allowed application origin; see `web.inline`). The
    embedded view keeps every form, redirect and JSON answer in that view and ends on
    `/step-up/{cid}/inline/done`, which tells the parent (and only O) that the proof passed."""

    def __init__(self, pages: Pages, stepup: StepUp, inline: InlineFrames,
                 replay: Replay | None = None) -> None:
        self.pages, self.stepup, self.inline, self.replay = pages, stepup, inline, replay

    def routes(self) -> list[Route]:
        r = Route
        return [
            r("/step-up/{cid}", self.step_up_page, methods=["GET"]),
            r("/step-up/{cid}/inline", self.inline_page, methods=["GET"]),
            r("/step-up/{cid}/inline/done", self.inline_done, methods=["GET"]),
            r("/step-up/{cid}/totp", self.step_up_totp, methods=["POST"]),
            r("/step-up/{cid}/recovery", self.step_up_recovery, methods=["POST"]),
            r("/step-up/{cid}/webauthn/begin", self.webauthn_begin, methods=["POST"]),
            r("/step-up/{cid}/webauthn/finish", self.webauthn_finish, methods=["POST"]),
            r("/step-up/{cid}/push", self.push_start, methods=["POST"]),
            r("/step-up/{cid}/push/status", self.push_status, methods=["GET"]),
            r("/step-up/{cid}/confirm", self.confirm_page, methods=["GET"]),
            r("/step-up/{cid}/confirm", self.confirm_held, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ the page

    def parent(self, request: Request) -> str | None:
        """The allowed application origin framing this request's page, or None (full page)."""
        if request.query_params.get("view") != "inline":
            return None
        origin = request.query_params.get("origin")
        return origin if self.inline.allows(origin) else None

    def message(self, request: Request, heading: str, text: str, status: int,
                parent: str | None, *, signed_out: bool = False) -> Response:
        if parent is None:
            return self.pages.message(request, heading, text, status)
        return self.inline.framable(self.pages.page(
            request, "message.html", status=status, heading=heading, message=text,
            link=None, signed_out=signed_out, embedded=True, parent_origin=parent,
            inline_challenge=request.path_params.get("cid", "")))

    async def step_up_page(self, request: Request) -> Response:
        return await self._page(request, self.parent(request))

    async def inline_page(self, request: Request) -> Response:
        """The dialog frame: refused (and not framable) for an origin that is not allowed."""
        parent = self.parent(request)
        if parent is None:
            return self.pages.message(
                request, N_("Not available here"),
                N_("This site is not allowed to show Stepguard's confirmation dialog."), 403)
        return await self._page(request, parent)

    async def _page(self, request: Request, parent: str | None) -> Response:
        found = await self.pages.session(request)
        cid = request.path_params["cid"]
        if found is None:
            if parent is not None:
                return self.message(request,
                                    N_("Signed out"), N_("Sign in again, then retry."), 401,
                                    parent, signed_out=True)
            return RedirectResponse(f"/login?rd={quote('/step-up/' + cid, safe='')}", 303)
        session, user = found
        try:
            challenge, methods, push = await run_in_threadpool(
                self.stepup.page, cid, session, user.id)
        except ChallengeGone as exc:
            return self.message(request, N_("Confirmation expired"), str(exc), 410, parent)
        flash = self.pages.flash(request)
        if flash is not None and flash.fields.get("challenge") != cid:
            flash = None  # another page's outcome: never shown here
        return self._step_up(
            request,
            session,
            user,
            challenge,
            methods,
            error=flash.error if flash else error_text(request.query_params.get("error")),
            status=flash.status if flash else 200,
            push=push and {
                "number": push.number,
                "expires_in": max(0, int(push.expires - self.pages.rt.now())),
            },
            parent=parent,
        )

    async def inline_done(self, request: Request) -> Response:
        """The end of the dialog: tells the parent that this session's proof passed."""
        parent = self.parent(request)
        found = await self.pages.session(request)
        cid = request.path_params["cid"]
        if parent is None or found is None or not await run_in_threadpool(
                self.stepup.settled, cid, found[0]):
            return self.message(request, N_("Nothing to continue"),
                                N_("There is no confirmation to hand back."), 404, parent)
        return self.inline.framable(self.pages.page(
            request, "inline_done.html", *found, embedded=True, parent_origin=parent,
            inline_challenge=cid))

    def _step_up(
        self,
        request: Request,
        session: SessionRecord,
        user: UserRecord,
        challenge: ChallengeRecord,
        methods: list[str],
        error: str | None = None,
        push: Any = None,
        status: int = 200,
        parent: str | None = None,
    ) -> Response:
        allowed = challenge.requirement.methods or ALL_METHODS
        base = f"/step-up/{challenge.id}"
        keep = "" if parent is None else self.inline.query(parent)
        view = {
            "id": challenge.id,
            "reasons": reasons_in(self.pages.language(request), challenge.reasons,
                                  challenge.reason_texts),
            "bound_values": bound_view(challenge.bound_values, self.pages.rt.policy.display,
                                       self.pages.language(request)),
            "level_label": challenge.requirement.level.label,
            "methods": methods,
            "not_set_up": [
                m for m in ("webauthn", "totp", "push") if m in allowed and m not in methods
            ],
            "expires_in": max(0, int(challenge.expires - self.pages.rt.now())),
            # Only a request whose body is held is replayed; others are simply retried.
            "held_method": challenge.held_method if challenge.held_body else "GET",
            "return_url": challenge.return_url,
            "agent_call": agent_call_view(challenge),
        }
        response = self.pages.page(
            request,
            "step_up.html",
            session,
            user,
            status,
            challenge=view,
            error=error,
            push=push,
            totp_url=f"{base}/totp{keep}",
            recovery_url=f"{base}/recovery{keep}",
            webauthn_begin_url=f"{base}/webauthn/begin{keep}",
            webauthn_finish_url=f"{base}/webauthn/finish{keep}",
            push_start_url=f"{base}/push{keep}",
            push_status_url=f"{base}/push/status{keep}",
            account_url="/account",
            embedded=parent is not None,
            parent_origin=parent,
            inline_challenge=challenge.id,
        )
        return response if parent is None else self.inline.framable(response)

    async def _refused(self, request: Request, session: SessionRecord, user: UserRecord,
                       cid: str, exc: Throttled | VerificationFailed,
                       status: int | None = None) -> Response:
        """A refused proof. A browser gets post/redirect/get: a 303 back to this challenge's
        page (its embedded view in the dialog), whose GET shows the error once with its status
        (401 wrong, 429 throttled), so a refresh never sends the code again. An API or script
        client (no `text/html` in Accept) is answered directly, 429 with `Retry-After`."""
        if isinstance(exc, Throttled):
            text, status = throttle_text(exc, self.pages.language(request)), 429
        else:
            text, status = exc.reason, status or 401
        parent = self.parent(request)
        if wants_html(request.headers):
            url = f"/step-up/{cid}" if parent is None else (
                f"/step-up/{cid}/inline{self.inline.query(parent)}")
            return self.pages.flash_redirect(url, Flash(text, status, {"challenge": cid}))
        response = await self._retry(request, session, user, cid, text, status)
        if isinstance(exc, Throttled) and not exc.locked:
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response

    async def _retry(
        self,
        request: Request,
        session: SessionRecord,
        user: UserRecord,
        cid: str,
        error: str,
        status: int,
    ) -> Response:
        parent = self.parent(request)
        try:
            challenge = await run_in_threadpool(self.stepup.live, cid, session)
        except ChallengeGone as exc:
            return self.message(request, N_("Confirmation expired"), str(exc), 410, parent)
        methods = await run_in_threadpool(self.stepup.methods_for, challenge, user.id)
        return self._step_up(request, session, user, challenge, methods, error=error,
                             status=status, parent=parent)

    # ------------------------------------------------------------------ form factors

    async def _verify(self, request: Request, call: Verify) -> Response:
        pages, parent = self.pages, self.parent(request)
        found = await pages.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse("/login", 303)
        session, user = found
        try:
            form = await pages.form(request, session)
            passed = await run_in_threadpool(call, session, form)
        except CsrfRejected:
            return self.message(request,
                                N_("Request refused"), N_("The form expired. Try again."), 403,
                                parent)
        except ChallengeGone as exc:
            return self.message(request, N_("Confirmation expired"), str(exc), 410, parent)
        except (Throttled, VerificationFailed) as exc:
            return await self._refused(request, session, user, cid, exc)
        return self.after_pass(passed, parent)

    def after_pass(self, passed: Passed, parent: str | None = None) -> Response:
        """The rotated session cookie and where to go after a passed challenge."""
        return self.pages.with_token(
            RedirectResponse(self._next_url(passed, parent), 303), passed.token
        )

    def _next_url(self, passed: Passed, parent: str | None) -> str:
        """After a pass: the dialog's end (embedded view); else the confirmation page of a held
        request, else the return URL. The dialog never replays a held request: the
        application's own code sends it again (once) and the new grant lets it through."""
        challenge = passed.challenge
        if parent is not None:
            return f"/step-up/{challenge.id}/inline/done{self.inline.query(parent)}"
        if delegated(challenge):  # an agent's tool call: the agent runs it, nothing to send
            return "/account?approved=agent-call"
        if challenge.held_method not in ("GET", "HEAD") and challenge.held_body:
            return f"/step-up/{challenge.id}/confirm"
        return self.pages.safe(challenge.return_url)

    def _json_pass(self, request: Request, passed: Passed) -> Response:
        return self.pages.with_token(
            JSONResponse({"redirect": self._next_url(passed, self.parent(request))}),
            passed.token,
        )

    async def step_up_totp(self, request: Request) -> Response:
        cid, ip = request.path_params["cid"], self.pages.client_ip(request)
        return await self._verify(
            request, lambda s, f: self.stepup.verify_totp(cid, s, f.get("code", ""), client_ip=ip)
        )

    async def step_up_recovery(self, request: Request) -> Response:
        cid, ip = request.path_params["cid"], self.pages.client_ip(request)
        return await self._verify(
            request,
            lambda s, f: self.stepup.verify_recovery(cid, s, f.get("code", ""), client_ip=ip),
        )

    # ------------------------------------------------------------------ passkeys

    async def webauthn_begin(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        return await self.pages.json_call(
            request,
            lambda s, u, b: Response(
                self.stepup.begin_webauthn(cid, s), media_type="application/json"
            ),
        )

    async def webauthn_finish(self, request: Request) -> Response:
        cid, ip = request.path_params["cid"], self.pages.client_ip(request)

        def finish(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            passed = self.stepup.finish_webauthn(cid, session, body.decode(), client_ip=ip)
            return self._json_pass(request, passed)

        return await self.pages.json_call(request, finish)

    # ------------------------------------------------------------------ push

    async def push_start(self, request: Request) -> Response:
        pages, parent = self.pages, self.parent(request)
        found = await pages.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse("/login", 303)
        session, user = found
        context = pages.context(request)
        try:
            await pages.form(request, session)
            await run_in_threadpool(
                lambda: self.stepup.start_push(
                    cid, session, client_ip=context.client_ip, user_agent=context.user_agent
                )
            )
        except CsrfRejected:
            return self.message(request,
                                N_("Request refused"), N_("The form expired. Try again."), 403,
                                parent)
        except ChallengeGone as exc:
            return self.message(request, N_("Confirmation expired"), str(exc), 410, parent)
        except (Throttled, VerificationFailed) as exc:  # push bombing guard: 429 either way
            return await self._refused(request, session, user, cid, exc, 429)
        # the page shows the number to pick
        if parent is not None:
            return RedirectResponse(f"/step-up/{cid}/inline{self.inline.query(parent)}", 303)
        return RedirectResponse(f"/step-up/{cid}", 303)

    async def push_status(self, request: Request) -> Response:
        found = await self.pages.session(request)
        if found is None:
            return JSONResponse({"status": "signed_out"}, 401)
        cid, ip = request.path_params["cid"], self.pages.client_ip(request)
        try:
            result = await run_in_threadpool(self.stepup.poll_push, cid, found[0], client_ip=ip)
        except ChallengeGone as exc:
            return JSONResponse({"status": "gone", "error": str(exc)}, 410)
        if isinstance(result, Passed):
            return self._json_pass(request, result)
        return JSONResponse({"status": result})

    # ------------------------------------------------------------------ held requests

    async def confirm_page(self, request: Request) -> Response:
        pages = self.pages
        found = await pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        challenge = await run_in_threadpool(
            self.stepup.passed, request.path_params["cid"], session
        )
        if challenge is None:
            return pages.message(request,
                                 N_("Nothing to send"), N_("There is no request to send."), 404)
        held = {
            "method": challenge.held_method,
            "url": pages.safe(challenge.return_url),
            "fields": form_fields(challenge.held_body),
            "size": len(challenge.held_body),
        }
        return pages.page(
            request,
            "confirm.html",
            session,
            user,
            held=held,
            confirm_url=f"/step-up/{challenge.id}/confirm",
            cancel_url="/account",
        )

    async def confirm_held(self, request: Request) -> Response:
        """The user confirmed the held request: hand it to the reverse proxy for replay."""
        pages = self.pages
        found = await pages.session(request)
        if found is None or self.replay is None:
            return pages.message(request,
                                 N_("Nothing to send"), N_("There is no request to send."), 404)
        try:
            await pages.form(request, found[0])
        except CsrfRejected:
            return pages.message(request, N_("Request refused"), N_("The form expired."), 403)
        response = await self.replay(request, request.path_params["cid"], found[0])
        if response.status_code in (403, 404):
            return pages.message(
                request,
                N_("Not sent"),
                N_("This confirmation no longer covers the "
                   "request: it was already sent, or it changed. Start again."),
                response.status_code,
            )
        return response
