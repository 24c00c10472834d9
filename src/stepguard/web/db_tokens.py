"""The account page's database access: issue (after a fresh proof), list and revoke database
tokens for the postgres door. A token is shown once, as a ready `psql` connection string."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from stepguard.core.decide import valid_events
from stepguard.core.errors import CsrfRejected
from stepguard.core.levels import Level
from stepguard.pgwire.tokens import TokenService, connection_string
from stepguard.service.accounts import NeedsFreshProof
from stepguard.storage.records import SessionRecord, UserRecord

if TYPE_CHECKING:
    from stepguard.web.portal import Portal

PATH = "/account/db-tokens"


class DbTokenPages:
    def __init__(self, portal: Portal) -> None:
        self.pages, self.account = portal.pages, portal.account
        self.tokens = TokenService(portal.pages.rt)

    def routes(self) -> list[Route]:
        return [Route(PATH, self.page, methods=["GET"]),
                Route(PATH, self.issue, methods=["POST"]),
                Route(PATH + "/revoke", self.revoke, methods=["POST"])]

    def _databases(self) -> list[str]:
        return [d.name for li in self.pages.rt.config.postgres.listeners for d in li.databases]

    async def page(self, request: Request) -> Response:
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        return await self._render(request, session, user)

    async def _render(self, request: Request, session: SessionRecord, user: UserRecord,
                      issued_url: str = "") -> Response:
        now = self.pages.rt.now()
        tokens = await run_in_threadpool(self.tokens.tokens.for_user, user.id, now=now)
        listed = [{"id": t.id, "level": t.level, "current": t.session_id == session.id,
                   "expires_in": f"{max(0, int((t.expires - now) // 60))} min"} for t in tokens]
        return self.pages.page(request, "db_tokens.html", session, user, tokens=listed,
                                databases=self._databases(), issue_url=PATH,
                                revoke_url=PATH + "/revoke", issued_url=issued_url)

    async def _posted(self, request: Request, *, fresh: bool = False
                      ) -> tuple[SessionRecord, UserRecord, dict[str, str]] | Response:
        """The signed-in session, user and CSRF-checked form (a fresh proof first if asked),
        or the response that stands instead."""
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            form = await self.pages.form(request, session)
            if fresh:
                await run_in_threadpool(self.account.accounts.require_fresh, session)
        except CsrfRejected:
            return self.pages.message(request, "Request refused", "The form expired.", 403)
        except NeedsFreshProof:
            return await self.account.confirm_first(request, session, PATH)
        return session, user, form

    async def issue(self, request: Request) -> Response:
        posted = await self._posted(request, fresh=True)
        if isinstance(posted, Response):
            return posted
        session, user, form = posted
        database = form.get("database", "")
        if database not in self._databases():
            return RedirectResponse(PATH, 303)
        level = self._level(session)
        issued = await run_in_threadpool(self.tokens.issue, session, user, level=level.label)
        host, port = self._address()
        url = connection_string(host=host, port=port, user_name=issued.user_name,
                                secret=issued.secret, database=database)
        return await self._render(request, session, user, issued_url=url)

    async def revoke(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        _session, user, form = posted
        await run_in_threadpool(self.tokens.revoke, form.get("token_id", ""), user_id=user.id)
        return RedirectResponse(PATH, 303)

    def _level(self, session: SessionRecord) -> Level:
        rt = self.pages.rt
        user = rt.store.users.get(session.user_id)
        assert user is not None
        events = valid_events(rt.policy.levels, session.state(user.subject()), rt.now())
        return max((e.level for e in events), default=Level.AAL0)

    def _address(self) -> tuple[str, int]:
        return public_address(self.pages.rt.config)


def public_address(config: Any) -> tuple[str, int]:
    """Where users reach the postgres door: `postgres.public_address` or the first listener."""
    settings = config.postgres
    address = settings.public_address or (
        settings.listeners[0].listen if settings.listeners else "localhost:6432")
    host, _, port = address.rpartition(":")
    return host, int(port)
