"""Step-up pages: the challenge page, each factor's verification, push polling and the
confirmation of a held request (replayed by the reverse proxy through the injected `Replay`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.service.stepup import ChallengeGone, Passed, StepUp, delegated
from stepguard.storage.records import ChallengeRecord, SessionRecord, UserRecord
from stepguard.web.agent_calls import agent_call_view
from stepguard.web.page import Pages
from stepguard.web.security import CsrfRejected
from stepguard.web.text import error_text, form_fields, throttle_text

# The reverse proxy's replay of a held request: (request, challenge id, session) -> response.
Replay = Callable[[Request, str, SessionRecord], Awaitable[Response]]
Verify = Callable[[SessionRecord, dict[str, str]], Passed]
ALL_METHODS = frozenset({"webauthn", "totp", "push", "recovery"})


class StepUpPages:
    def __init__(self, pages: Pages, stepup: StepUp, replay: Replay | None = None) -> None:
        self.pages, self.stepup, self.replay = pages, stepup, replay

    def routes(self) -> list[Route]:
        r = Route
        return [
            r("/step-up/{cid}", self.step_up_page, methods=["GET"]),
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

    async def step_up_page(self, request: Request) -> Response:
        found = await self.pages.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse(f"/login?rd={quote('/step-up/' + cid, safe='')}", 303)
        session, user = found
        try:
            challenge = await run_in_threadpool(self.stepup.live, cid, session)
            methods = await run_in_threadpool(self.stepup.methods_for, challenge, user.id)
            push = await run_in_threadpool(self.stepup.current_push, challenge)
        except ChallengeGone as exc:
            return self.pages.message(request, "Confirmation expired", str(exc), 410)
        return self._step_up(
            request,
            session,
            user,
            challenge,
            methods,
            error=error_text(request.query_params.get("error")),
            push=push and {
                "number": push.number,
                "expires_in": max(0, int(push.expires - self.pages.rt.now())),
            },
        )

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
    ) -> Response:
        allowed = challenge.requirement.methods or ALL_METHODS
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
            "expires_in": max(0, int(challenge.expires - self.pages.rt.now())),
            # Only a request whose body is held is replayed; others are simply retried.
            "held_method": challenge.held_method if challenge.held_body else "GET",
            "return_url": challenge.return_url,
            "agent_call": agent_call_view(challenge),
        }
        return self.pages.page(
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
            return self.pages.message(request, "Confirmation expired", str(exc), 410)
        methods = await run_in_threadpool(self.stepup.methods_for, challenge, user.id)
        return self._step_up(request, session, user, challenge, methods, error=error, status=status)

    # ------------------------------------------------------------------ form factors

    async def _verify(self, request: Request, call: Verify) -> Response:
        pages = self.pages
        found = await pages.session(request)
        cid = request.path_params["cid"]
        if found is None:
            return RedirectResponse("/login", 303)
        session, user = found
        try:
            form = await pages.form(request, session)
            passed = await run_in_threadpool(call, session, form)
        except CsrfRejected:
            return pages.message(request, "Request refused", "The form expired. Try again.", 403)
        except ChallengeGone as exc:
            return pages.message(request, "Confirmation expired", str(exc), 410)
        except Throttled as exc:
            return await self._retry(request, session, user, cid, throttle_text(exc), 429)
        except VerificationFailed as exc:
            return await self._retry(request, session, user, cid, exc.reason, 401)
        return self.pages.with_token(RedirectResponse(self._next_url(passed), 303), passed.token)

    def after_pass(self, passed: Passed) -> Response:
        """The rotated session cookie and where to go after a passed challenge."""
        return self.pages.with_token(RedirectResponse(self._next_url(passed), 303), passed.token)

    def _next_url(self, passed: Passed) -> str:
        """After a pass: the confirmation page of a held request, else the return URL."""
        challenge = passed.challenge
        if delegated(challenge):  # an agent's tool call: the agent runs it, nothing to send
            return "/account?approved=agent-call"
        if challenge.held_method not in ("GET", "HEAD") and challenge.held_body:
            return f"/step-up/{challenge.id}/confirm"
        return self.pages.safe(challenge.return_url)

    def _json_pass(self, passed: Passed) -> Response:
        return self.pages.with_token(
            JSONResponse({"redirect": self._next_url(passed)}), passed.token
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
            return self._json_pass(passed)

        return await self.pages.json_call(request, finish)

    # ------------------------------------------------------------------ push

    async def push_start(self, request: Request) -> Response:
        pages = self.pages
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
            return pages.message(request, "Request refused", "The form expired. Try again.", 403)
        except ChallengeGone as exc:
            return pages.message(request, "Confirmation expired", str(exc), 410)
        except (Throttled, VerificationFailed) as exc:
            text = throttle_text(exc) if isinstance(exc, Throttled) else exc.reason
            return await self._retry(request, session, user, cid, text, 429)
        return RedirectResponse(f"/step-up/{cid}", 303)  # the page shows the number to pick

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
            return self._json_pass(result)
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
            return pages.message(request, "Nothing to send", "There is no request to send.", 404)
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
            return pages.message(request, "Nothing to send", "There is no request to send.", 404)
        try:
            await pages.form(request, found[0])
        except CsrfRejected:
            return pages.message(request, "Request refused", "The form expired.", 403)
        response = await self.replay(request, request.path_params["cid"], found[0])
        if response.status_code in (403, 404):
            return pages.message(
                request,
                "Not sent",
                "This confirmation no longer covers the "
                "request: it was already sent, or it changed. Start again.",
                response.status_code,
            )
        return response
