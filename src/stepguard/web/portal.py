"""The portal: sign-in, step-up, account and admin pages (Jinja2, no front-end build).

One module per concept — `signin`, `step_up`, `account`, `admin` — around the page helper
(`page.Pages`); the pages read the store only through service queries (`PortalQueries`) and the
held-request replay is injected (the reverse proxy's, or None when there is no upstream).
"""

from __future__ import annotations

from starlette.routing import Route

from stepguard.service.accounts import Accounts
from stepguard.service.guard import Guard
from stepguard.service.portal_queries import PortalQueries
from stepguard.service.runtime import Runtime
from stepguard.service.stepup import StepUp
from stepguard.web.account import AccountPages
from stepguard.web.admin import AdminConsole
from stepguard.web.inline import MODULE_PATH, InlineFrames
from stepguard.web.page import PRE_SESSION_COOKIE, Pages
from stepguard.web.signin import SignInPages
from stepguard.web.step_up import Replay, StepUpPages
from stepguard.web.text import describe_browser

__all__ = ["PRE_SESSION_COOKIE", "Portal", "describe_browser"]


class Portal:
    """Every portal page, wired from the runtime and the services."""

    def __init__(self, runtime: Runtime, guard: Guard, stepup: StepUp, accounts: Accounts,
                 *, replay: Replay | None = None) -> None:
        self.pages = Pages(runtime, guard)
        queries = PortalQueries(runtime, stepup)
        self.sign_in = SignInPages(self.pages, accounts)
        self.inline = InlineFrames(runtime)
        self.step_up = StepUpPages(self.pages, stepup, self.inline, replay)
        self.account = AccountPages(self.pages, accounts, stepup, queries)
        self.admin = AdminConsole(self.pages, guard, stepup, accounts)

    def routes(self) -> list[Route]:
        return [
            Route(MODULE_PATH, self.inline.module, methods=["GET"]),
            *self.sign_in.routes(),
            *self.step_up.routes(),
            *self.account.routes(),
            *self.admin.routes(),
        ]
