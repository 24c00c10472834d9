"""The account's agent tokens page (`/account/agents`): create (after a fresh proof, shown
once), list and revoke the tokens AI agents present at the MCP door."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from stepguard.core.errors import CsrfRejected
from stepguard.service.accounts import NeedsFreshProof
from stepguard.service.agent_tokens import AgentTokenNotFound, AgentTokens

if TYPE_CHECKING:
    from stepguard.web.portal import Portal

PATH = "/account/agents"


class AgentsPage:
    def __init__(self, portal: Portal) -> None:
        self.pages, self.account = portal.pages, portal.account
        self.rt = portal.pages.rt
        self.tokens = AgentTokens(self.rt)

    def routes(self) -> list[Route]:
        return [Route(PATH, self.show, methods=["GET"]),
                Route(PATH, self.create, methods=["POST"]),
                Route(f"{PATH}/revoke", self.revoke, methods=["POST"])]

    async def show(self, request: Request, *, token: str = "", status: int = 200) -> Response:
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        now = self.rt.now()
        rows = await run_in_threadpool(self.tokens.for_user, user.id)
        agents = [{"id": r.id, "name": r.name, "live": r.live(now),
                   "expires": r.expires, "last_used": r.last_used} for r in rows]
        return self.pages.page(request, "agents.html", session, user, status, agents=agents,
                                new_token=token, create_url=PATH, revoke_url=f"{PATH}/revoke",
                                mcp_url=self.rt.config.server.public_url.rstrip("/")
                                + "/mcp/<server>")

    async def create(self, request: Request) -> Response:
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            form = await self.pages.form(request, session)
            self.account.accounts.require_fresh(session, first_factor_ok=False)
            issued = await run_in_threadpool(
                self.tokens.create, user.id, form.get("name", ""),
                ttl=self.rt.config.mcp.agent_token_ttl)
        except CsrfRejected:
            return self.pages.message(request, "Request refused", "The form expired.", 403)
        except NeedsFreshProof:
            return await self.account.confirm_first(request, session, PATH)
        except ValueError as exc:
            return self.pages.message(request, "Not created", str(exc), 400,
                                       {"href": PATH, "text": "Back to agents"})
        return await self.show(request, token=issued.token)

    async def revoke(self, request: Request) -> Response:
        found = await self.pages.signed_in(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            form = await self.pages.form(request, session)
            await run_in_threadpool(self.tokens.revoke, form.get("token_id", ""),
                                    user_id=user.id)
        except CsrfRejected:
            return self.pages.message(request, "Request refused", "The form expired.", 403)
        except AgentTokenNotFound:
            return self.pages.message(request, "Not found", "No such agent token.", 404,
                                       {"href": PATH, "text": "Back to agents"})
        return RedirectResponse(PATH, 303)
