"""Account pages: the overview (factors, sessions, devices, recent events), factor enrolment
(TOTP, passkeys, push devices, recovery codes) behind a fresh proof, and push approvals."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepguard.core.errors import StepguardError, Throttled, VerificationFailed
from stepguard.service.accounts import Accounts, NeedsFreshProof
from stepguard.service.portal_queries import AccountOverview, PortalQueries
from stepguard.service.push_devices import PushDevices
from stepguard.service.stepup import StepUp
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.web.page import Pages
from stepguard.web.render import N_
from stepguard.web.security import CsrfRejected
from stepguard.web.text import (
    bound_view,
    describe_browser,
    reasons_in,
    security_event,
    throttle_text,
    unb64url,
    when,
)

AccountAction = Callable[[SessionRecord, UserRecord, dict[str, str]], str]
ENROL_COOKIE = "stepguard_enrol"


class AccountPages:
    def __init__(
        self, pages: Pages, accounts: Accounts, stepup: StepUp, queries: PortalQueries
    ) -> None:
        self.pages, self.accounts, self.stepup, self.queries = pages, accounts, stepup, queries
        self.push_devices = PushDevices(accounts)

    def routes(self) -> list[Route]:
        r = Route
        return [
            r("/account", self.account_page, methods=["GET"]),
            r("/account/sessions/revoke", self.revoke_session, methods=["POST"]),
            r("/account/sessions/end-all", self.end_all_sessions, methods=["POST"]),
            r("/account/factors/remove", self.remove_factor, methods=["POST"]),
            r("/account/totp", self.totp_begin, methods=["GET"]),
            r("/account/totp", self.totp_confirm, methods=["POST"]),
            r("/account/passkey", self.passkey_page, methods=["GET"]),
            r("/account/passkey/begin", self.passkey_begin, methods=["POST"]),
            r("/account/passkey/finish", self.passkey_finish, methods=["POST"]),
            r("/account/recovery", self.recovery_regenerate, methods=["POST"]),
            r("/account/password/remove", self.remove_password, methods=["POST"]),
            r("/account/push-device", self.push_device_page, methods=["GET"]),
            r("/account/push-device/begin", self.push_device_begin, methods=["POST"]),
            r("/account/push-device/finish", self.push_device_finish, methods=["POST"]),
            r("/account/push/{pid}", self.push_page, methods=["GET"]),
            r("/account/push/{pid}", self.push_answer, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ overview

    async def account_page(self, request: Request) -> Response:
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        overview = await run_in_threadpool(self.queries.account, session, user)
        return self.pages.page(
            request,
            "account.html",
            session,
            user,
            flash=request.query_params.get("m"),
            revoke_url="/account/sessions/revoke",
            end_all_url="/account/sessions/end-all",
            remove_factor_url="/account/factors/remove",
            enrol_totp_url="/account/totp",
            enrol_passkey_url="/account/passkey",
            enrol_push_url="/account/push-device",
            recovery_url="/account/recovery",
            remove_password_url="/account/password/remove",  # noqa: S106 (a URL)
            logout_url="/logout",
            db_tokens_url="/account/db-tokens" if self.pages.rt.config.postgres.listeners else "",
            **account_view(overview, session, self.pages.translator(request)),
        )

    async def _account_post(self, request: Request, action: AccountAction) -> Response:
        pages = self.pages
        found = await pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            form = await pages.form(request, session)
            note = await run_in_threadpool(action, session, user, form)
        except CsrfRejected:
            return pages.message(request, N_("Request refused"), N_("The form expired."), 403)
        except NeedsFreshProof as exc:
            return pages.message(
                request,
                "Confirm it's you",
                str(exc) + " Sign in again, or confirm with a second factor, then retry.",
                403,
                {"href": "/login?rd=%2Faccount", "text": N_("Sign in again")},
            )
        return RedirectResponse(f"/account?m={quote(note)}", 303)

    async def revoke_session(self, request: Request) -> Response:
        return await self._account_post(
            request,
            lambda s, u, f: (
                N_("Session ended.")
                if self.accounts.revoke_session(s, f.get("session_id", ""))
                else N_("No such session.")
            ),
        )

    async def end_all_sessions(self, request: Request) -> Response:
        """Sign out everywhere else and revoke every agent token (no fresh proof: it only
        takes access away)."""
        def end(session: SessionRecord, user: UserRecord, form: dict[str, str]) -> str:
            sessions, agents = self.accounts.end_all_sessions(
                user.id, except_session=session.id, by="owner")
            return (f"Signed out {sessions} other session(s); revoked {agents} agent "
                    "token(s).")
        return await self._account_post(request, end)

    async def remove_factor(self, request: Request) -> Response:
        return await self._account_post(
            request,
            lambda s, u, f: (
                N_("Removed.")
                if self.accounts.remove_factor(s, f.get("factor_id", ""))
                else N_("Not found.")
            ),
        )

    async def remove_password(self, request: Request) -> Response:
        def remove(session: SessionRecord, user: UserRecord, form: dict[str, str]) -> str:
            try:
                self.accounts.remove_password(session)
            except VerificationFailed as exc:
                return f"Password kept: {exc.reason}"
            return N_("You now sign in with your passkey; your password no longer works.")

        return await self._account_post(request, remove)

    # ------------------------------------------------------------------ enrolment

    async def confirm_first(self, request: Request, session: SessionRecord,
                            return_to: str) -> Response:
        """A factor change needs a fresh proof: a step-up (or a fresh sign-in) comes first."""
        challenge = await run_in_threadpool(
            self.accounts.fresh_proof_challenge, session, self.pages.context(request), return_to
        )
        if challenge is None:
            return RedirectResponse(f"/login?rd={quote(return_to, safe='')}", 303)
        return RedirectResponse(f"/step-up/{challenge.id}", 303)

    async def totp_begin(self, request: Request) -> Response:
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            enrolment = await run_in_threadpool(self.accounts.begin_totp, session, user)
        except NeedsFreshProof:
            return await self.confirm_first(request, session, "/account/totp")
        return self.pages.page(
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
            return N_("Authenticator app added.")

        return await self._account_post(request, confirm)

    async def _enrol_page(self, request: Request, template: str, path: str) -> Response:
        """An enrolment page behind a fresh proof, with its begin and finish URLs."""
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        try:
            await run_in_threadpool(self.accounts.require_fresh, found[0])
        except NeedsFreshProof:
            return await self.confirm_first(request, found[0], path)
        return self.pages.page(request, template, *found, begin_url=f"{path}/begin",
                               finish_url=f"{path}/finish")

    async def passkey_page(self, request: Request) -> Response:
        return await self._enrol_page(request, "enrol_passkey.html", "/account/passkey")

    async def passkey_begin(self, request: Request) -> Response:
        def begin(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            options, enrolment_id = self.accounts.begin_passkey(session, user)
            response = Response(options, media_type="application/json")
            response.set_cookie(
                ENROL_COOKIE,
                enrolment_id,
                httponly=True,
                secure=self.pages.https,
                samesite="strict",
                path="/account/passkey",
            )
            return response

        return await self.pages.json_call(request, begin)

    async def passkey_finish(self, request: Request) -> Response:
        enrolment_id = request.cookies.get(ENROL_COOKIE, "")

        def finish(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            try:  # client input: a 400, never a 500
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
                credential = payload.get("credential", payload)
                if not isinstance(credential, dict):
                    raise ValueError("no credential")
            except ValueError:
                return JSONResponse(
                    {"error": self.pages.say(request, N_("The passkey answer was not readable."))},
                    400)
            self.accounts.finish_passkey(
                session, enrolment_id, json.dumps(credential), str(payload.get("label", "Passkey"))
            )
            return JSONResponse({"redirect": "/account?m=Passkey%20added."})

        return await self.pages.json_call(request, finish)

    async def recovery_regenerate(self, request: Request) -> Response:
        pages = self.pages
        found = await pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            await pages.form(request, session)
            codes = await run_in_threadpool(self.accounts.regenerate_recovery_codes, session)
        except CsrfRejected:
            return pages.message(request, N_("Request refused"), N_("The form expired."), 403)
        except NeedsFreshProof as exc:
            return pages.message(request, N_("Confirm it's you"), str(exc), 403)
        return pages.page(
            request, "recovery_codes.html", session, user, codes=codes, done_url="/account"
        )

    # ------------------------------------------------------------------ push devices

    async def push_page(self, request: Request) -> Response:
        pages = self.pages
        found = await pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        pid = request.path_params["pid"]
        pending = await run_in_threadpool(self.stepup.pending_pushes, session)
        match = [(p, c) for p, c in pending if p.id == pid]
        if not match:
            return pages.message(
                request, N_("Nothing to approve"), N_("This request is no longer pending."), 404
            )
        push, challenge = match[0]
        devices = await run_in_threadpool(self.stepup.push_devices, user.id)
        return pages.page(
            request,
            "push_approve.html",
            session,
            user,
            push={
                "id": push.id,
                "options": list(push.options),
                "requested_at": when(push.created),
                "expires_in": max(0, int(push.expires - pages.rt.now())),
                "ip": push.client_ip,
                "location": push.location,
                "browser": describe_browser(push.user_agent),
                "reasons": reasons_in(pages.language(request), challenge.reasons,
                                      challenge.reason_texts),
                "bound_values": bound_view(challenge.bound_values, pages.rt.policy.display,
                                           pages.language(request)),
                "nonce": push.nonce,
                "digest": push.digest,
            },
            devices=[d.id for d in devices],
            answer_url=f"/account/push/{push.id}",
        )

    async def push_answer(self, request: Request) -> Response:
        pid, ip = request.path_params["pid"], self.pages.client_ip(request)

        def answer(session: SessionRecord, user: UserRecord, form: dict[str, str]) -> str:
            try:
                status = self.stepup.answer_push(
                    pid,
                    session,
                    picked=int(form.get("picked", "")),
                    device_id=form.get("device_id", ""),
                    signature=unb64url(form.get("signature", "")),
                    client_ip=ip,
                )
            except Throttled as exc:
                return f"Not answered: {throttle_text(exc, self.pages.language(request))}"
            except (ValueError, StepguardError) as exc:
                return f"Not answered: {getattr(exc, 'reason', 'the answer was not readable.')}"
            return N_("Approved.") if status == "approved" else N_("Refused.")

        return await self._account_post(request, answer)

    async def push_device_page(self, request: Request) -> Response:
        return await self._enrol_page(request, "enrol_push.html", "/account/push-device")

    async def push_device_begin(self, request: Request) -> Response:
        def begin(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            enrolment = self.push_devices.begin(session)
            return JSONResponse(
                {"enrolment_id": enrolment.enrolment_id, "nonce": enrolment.nonce}
            )

        return await self.pages.json_call(request, begin)

    async def push_device_finish(self, request: Request) -> Response:
        user_agent = request.headers.get("user-agent", "")

        def finish(session: SessionRecord, user: UserRecord, body: bytes) -> Response:
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
                fields = {k: str(payload.get(k, "")) for k in
                          ("enrolment_id", "alg", "public_key", "signature", "label")}
                public_key = unb64url(fields["public_key"])
                signature = unb64url(fields["signature"])
            except ValueError:
                return JSONResponse({"error": N_("The device answer was not readable.")}, 400)
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

        return await self.pages.json_call(request, finish)


def account_view(overview: AccountOverview, session: SessionRecord,
                 say: Callable[[str], str] = str) -> dict[str, Any]:
    """The account page's template context, worded from the overview (`say` translates)."""
    return {
        "factors": [
            {
                "id": f.id,
                "kind": f.kind,
                "label": f.label,
                "created_text": when(f.created),
                "last_used_text": when(f.last_used) if f.last_used else "never",
            }
            for f in overview.factors
        ],
        "push_devices": [
            {
                "id": f.id,
                "label": f.label,
                "browser": describe_browser(str(f.data.get("user_agent", ""))),
                "created_text": when(f.created),
                "last_used_text": when(f.last_used) if f.last_used else "never",
            }
            for f in overview.push_devices
        ],
        "sessions": [
            {
                "id": s.id,
                "current": s.id == session.id,
                "ip": s.ip,
                "user_agent": describe_browser(s.user_agent),
                "created_text": when(s.created),
                "last_seen_text": when(s.last_seen),
            }
            for s in overview.sessions
        ],
        "devices": devices_view(overview, session),
        "events": [
            {"at_text": when(e.at), "text": say(text), "detail": [say(r) for r in e.reasons]}
            for e in overview.events
            if (text := security_event(e)) is not None
        ],
        "has_password": overview.has_password,
        "pending_pushes": [
            {"id": p.id, "url": f"/account/push/{p.id}"} for p in overview.pending_pushes
        ],
    }


def devices_view(overview: AccountOverview, session: SessionRecord) -> list[dict[str, Any]]:
    """Known devices (every device that signed in, from the first sign-in on), described by the
    newest open session on each: browser, last seen, and which one is this browser."""
    newest: dict[str, SessionRecord] = {}
    for s in overview.sessions:  # most recently seen first
        newest.setdefault(s.device_id, s)
    shown = []
    for device in overview.known_devices:
        seen = newest.get(device)
        shown.append({
            "browser": describe_browser(seen.user_agent) if seen else "",
            "last_seen_text": when(seen.last_seen) if seen else "",
            "current": device == session.device_id,
        })
    return sorted(shown, key=lambda d: (not d["current"], d["last_seen_text"] == ""))
