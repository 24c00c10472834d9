"""Admin console: users, sessions and the newest audit entries; revoke, disable and unlock.

Every admin page is itself decided by the policy (a step-up when a rule asks for one)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from stepguard.service.accounts import Accounts
from stepguard.service.guard import Guard
from stepguard.service.portal_queries import AdminFilters, AdminOverview, PortalQueries
from stepguard.service.stepup import StepUp
from stepguard.web.page import Pages, SignedInPair
from stepguard.web.render import N_
from stepguard.web.security import CsrfRejected
from stepguard.web.text import when


class AdminPages:
    def __init__(self, pages: Pages, guard: Guard, stepup: StepUp, accounts: Accounts,
                 queries: PortalQueries) -> None:
        self.pages, self.guard, self.stepup = pages, guard, stepup
        self.accounts, self.queries = accounts, queries

    def routes(self) -> list[Route]:
        return [
            Route("/admin", self.admin_page, methods=["GET"]),
            Route("/admin/sessions/revoke", self.admin_revoke, methods=["POST"]),
            Route("/admin/users/disable", self.admin_disable, methods=["POST"]),
            Route("/admin/users/unlock", self.admin_unlock, methods=["POST"]),
        ]

    async def _admin(self, request: Request) -> SignedInPair | Response:
        """The signed-in admin, after the policy's decision on this very request."""
        pages = self.pages
        found = await pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        if "admins" not in user.groups:
            return pages.message(request,
                                 N_("Not allowed"), N_("The admin console is for admins."), 403)
        context = pages.context(request)
        check = await run_in_threadpool(self.guard.check, context, pages.token(request))
        if not check.decision.allowed:
            if check.decision.outcome.value == "deny":
                return pages.message(request,
                                     N_("Not allowed"), " ".join(check.decision.reasons), 403)
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
        filters = AdminFilters(
            user=q.get("user", ""), rule=q.get("rule", ""), outcome=q.get("outcome", "")
        )
        overview = await run_in_threadpool(self.queries.admin, filters)
        return self.pages.page(
            request,
            "admin.html",
            *found,
            filters={"user": filters.user, "rule": filters.rule, "outcome": filters.outcome},
            revoke_url="/admin/sessions/revoke",
            disable_url="/admin/users/disable",
            unlock_url="/admin/users/unlock",
            **admin_view(overview),
        )

    async def admin_revoke(self, request: Request) -> Response:
        found = await self._admin(request)
        if isinstance(found, Response):
            return found
        form = await self.pages.form(request, found[0])
        await run_in_threadpool(
            self.accounts.revoke_session, None, form.get("session_id", ""), admin=found[1].id
        )
        return RedirectResponse("/admin", 303)

    async def admin_disable(self, request: Request) -> Response:
        found = await self._admin(request)
        if isinstance(found, Response):
            return found
        form = await self.pages.form(request, found[0])
        await run_in_threadpool(self.accounts.disable_user, form.get("user_id", ""), by=found[1].id)
        return RedirectResponse("/admin", 303)

    async def admin_unlock(self, request: Request) -> Response:
        """Lift a user's throttle locks: a confirmation page first, then the unlock."""
        pages = self.pages
        found = await self._admin(request)
        if isinstance(found, Response):
            return found
        try:
            form = await pages.form(request, found[0])
        except CsrfRejected:
            return pages.message(request, N_("Request refused"), N_("The form expired."), 403)
        user = await run_in_threadpool(self.queries.user, form.get("user_id", ""))
        if user is None:
            return pages.message(request, N_("No such user"), N_("That user does not exist."), 404)
        if form.get("confirm") != "yes":
            return pages.page(request, "admin_unlock.html", *found,
                              account={"id": user.id, "username": user.username},
                              unlock_url="/admin/users/unlock", cancel_url="/admin")
        await run_in_threadpool(self.accounts.unlock, user.id, by=found[1].id)
        return RedirectResponse("/admin", 303)


def admin_view(overview: AdminOverview) -> dict[str, Any]:
    """The admin page's template context, worded from the overview."""
    names = {u.id: u.username for u in overview.users}
    return {
        "users": [
            {
                "id": u.id,
                "username": u.username,
                "display_name": u.display_name,
                "groups": sorted(u.groups),
                "disabled": u.disabled,
                "factor_count": overview.factor_counts.get(u.id, 0),
            }
            for u in overview.users
        ],
        "sessions": [
            {
                "id": s.id,
                "user": names.get(s.user_id, s.user_id),
                "ip": s.ip,
                "last_seen_text": when(s.last_seen),
            }
            for s in overview.sessions
        ],
        "entries": [
            {
                "seq": e.seq,
                "at_text": when(e.at),
                "kind": e.kind,
                "subject": names.get(e.subject, e.subject),
                "rule": e.rule,
                "decision": e.decision,
                "outcome": e.outcome,
                "factor": e.factor,
                "reasons": list(e.reasons),
            }
            for e in overview.entries
        ],
    }
