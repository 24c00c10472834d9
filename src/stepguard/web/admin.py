"""The admin console: users, sessions, the policy in force, the ledger, notifications, the
dashboard — each route behind a role (auditor < operator < admin) and the policy's step-up.

One table (`AdminConsole.table`) names every admin route with the least role it needs; `routes()`
wraps each handler in the same gate, so no route can be added without a role. The gate: signed
in (else to the sign-in page), a role from the user's groups (`admin.roles`; else 403), the
role at least the route's (else 403), then the policy decides the request like any other (the
admin rule's step-up). Actions change nothing until confirmed (a second POST with
`confirm=yes`), every POST checks CSRF, and every action is audited by the service it calls.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from stepguard.audit.ledger import AuditEntry, VerifyReport
from stepguard.service.accounts import Accounts
from stepguard.service.admin_queries import AdminQueries, AuditFilters
from stepguard.service.guard import Guard
from stepguard.service.stepup import StepUp
from stepguard.storage.policy_versions import policy_diff
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.web import charts
from stepguard.web.charts import Say
from stepguard.web.page import Pages
from stepguard.web.render import N_
from stepguard.web.security import CsrfRejected
from stepguard.web.text import when as _when

RANK = {"auditor": 1, "operator": 2, "admin": 3}
BACK = {"href": "/admin", "text": N_("Back")}
PAGE = 50
PERIODS = {"24h": (86400.0, 3600.0, "%H:00"), "7d": (7 * 86400.0, 86400.0, "%m-%d"),
           "30d": (30 * 86400.0, 86400.0, "%m-%d")}


@dataclass(frozen=True, slots=True)
class Operator:
    session: SessionRecord
    user: UserRecord
    role: str

    def may(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


AdminHandler = Callable[[Request, Operator], Awaitable[Response]]


class AdminConsole:
    def __init__(self, pages: Pages, guard: Guard, stepup: StepUp, accounts: Accounts) -> None:
        self.pages, self.rt = pages, pages.rt
        self.guard, self.stepup, self.accounts = guard, stepup, accounts
        self.queries = AdminQueries(pages.rt)
        self.verified: tuple[float, VerifyReport] | None = None

    def table(self) -> list[tuple[str, str, str, AdminHandler]]:
        """Every admin route: path, method, the least role it needs, handler."""
        return [
            ("/admin", "GET", "auditor", self.overview),
            ("/admin/dashboard", "GET", "auditor", self.dashboard),
            ("/admin/audit", "GET", "auditor", self.audit),
            ("/admin/policy", "GET", "auditor", self.policy),
            ("/admin/notifications", "GET", "auditor", self.notifications),
            ("/admin/chain/verify", "POST", "auditor", self.verify_chain),
            ("/admin/sessions/revoke", "POST", "operator", self.revoke_session),
            ("/admin/users/disable", "POST", "operator", self.disable_user),
            ("/admin/users/unlock", "POST", "operator", self.unlock_user),
            ("/admin/users/end-sessions", "POST", "operator", self.end_sessions),
            ("/admin/users/reset-factors", "POST", "admin", self.reset_factors),
            ("/admin/users/create", "POST", "admin", self.create_user),
        ]

    def routes(self) -> list[Route]:
        return [Route(path, self._gate(role, handler), methods=[method])
                for path, method, role, handler in self.table()]

    def role_of(self, user: UserRecord) -> str | None:
        held = [role for role, groups in self.rt.config.admin.roles.items()
                if not user.groups.isdisjoint(groups)]
        return max(held, key=RANK.__getitem__, default=None)

    # ------------------------------------------------------------------ the gate

    def _gate(self, needed: str, handler: AdminHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            entered = await self._enter(request, needed)
            if isinstance(entered, Response):
                return entered
            return await handler(request, entered)
        return endpoint

    async def _enter(self, request: Request, needed: str) -> Operator | Response:
        portal = self.pages
        found = await portal.session(request)
        if found is None:
            return RedirectResponse(f"/login?rd={quote(request.url.path, safe='')}", 303)
        session, user = found
        role = self.role_of(user)
        if role is None or RANK[role] < RANK[needed]:
            text = (portal.say(request, N_("Your account may not use the admin console."))
                    if role is None else portal.say(request, N_(
                        "Your account may not use this action (needs %(role)s).")) % {
                        "role": needed})
            return portal.message(request, N_("Not allowed"), text, 403)
        context = portal.context(request)
        check = await run_in_threadpool(self.guard.check, context, portal.token(request))
        if not check.decision.allowed:
            if check.decision.outcome.value == "deny":
                say = portal.translator(request)
                return portal.message(request, N_("Not allowed"),
                                      " ".join(say(r) for r in check.decision.reasons), 403)
            back = "/admin" if request.method != "GET" else request.url.path
            challenge = await run_in_threadpool(
                lambda: self.stepup.start(check.decision, context, session, return_url=back))
            return RedirectResponse(f"/step-up/{challenge.id}", 303)
        return Operator(session, user, role)

    def _page(self, request: Request, who: Operator, name: str, **context: Any) -> Response:
        response = self.pages.page(request, name, who.session, who.user, role=who.role,
                                    may={r: who.may(r) for r in RANK}, **context)
        response.headers["Cache-Control"] = "no-store"
        return response

    # ------------------------------------------------------------------ read-only pages

    async def overview(self, request: Request, who: Operator) -> Response:
        view = await run_in_threadpool(self._overview)
        return self._page(request, who, "admin.html", flash=request.query_params.get("m", ""),
                          **view)

    def _overview(self) -> dict[str, Any]:
        q = self.queries
        people, state = q.people(), q.ledger()
        names = people.names
        version = self.rt.policy_version
        now = self.rt.now()
        return {
            "users": [{"id": u.id, "username": u.username, "display_name": u.display_name,
                       "groups": sorted(u.groups), "disabled": u.disabled,
                       "role": self.role_of(u) or "",
                       "factor_count": people.factor_counts.get(u.id, 0),
                       "source": people.sources.get(u.id, "local")} for u in people.users],
            "sessions": [{"id": s.id, "user": names.get(s.user_id, s.user_id), "ip": s.ip,
                          "last_seen_text": _when(s.last_seen)} for s in people.sessions],
            "chain": {"head": state.head.seq, "hash": state.head.hash[:16],
                      "count": state.count, "checkpoint": state.checkpoint_seq,
                      "verified": self._verified()},
            "policy": {"version": version.version if version else None,
                       "digest": version.digest[:16] if version else "",
                       "loaded": _when(version.loaded_at) if version else "",
                       "mode": "report" if self.rt.policy.report else "enforce",
                       "report_rules": [r.name for r in self.rt.policy.rules if r.report]},
            "shadow": self._shadow(now - 86400.0, now + 1),
            "dead_letters": q.dead_letter_count(),
        }

    def _shadow(self, since: float, until: float) -> list[dict[str, Any]]:
        """Per rule, real outcomes beside the would-be outcomes of report mode."""
        rows: dict[str, dict[str, int]] = {}
        for t in self.queries.activity(since=since, until=until).tallies:
            if t.kind != "decision":
                continue
            row = rows.setdefault(t.rule or "-", {})
            key = t.outcome if t.outcome.startswith("would_") else (t.decision or t.outcome)
            row[key] = row.get(key, 0) + t.requests
        return [{"rule": rule, **counts} for rule, counts in sorted(rows.items())
                if any(k.startswith("would_") for k in counts)]

    def _verified(self) -> dict[str, Any] | None:
        if self.verified is None:
            return None
        at, report = self.verified
        return {"at": _when(at), "ok": report.ok, "text": str(report)}

    async def audit(self, request: Request, who: Operator) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "").strip()[:255] for k in
                   ("user", "rule", "outcome", "kind", "from", "to")}
        before = _int(q.get("before"))
        view = await run_in_threadpool(self._audit_view, filters, before)
        return self._page(request, who, "admin_audit.html", filters=filters, **view)

    def _audit_view(self, filters: dict[str, str], before: int | None) -> dict[str, Any]:
        entries = self.queries.page(AuditFilters(
            user=filters["user"], rule=filters["rule"], outcome=filters["outcome"],
            kind=filters["kind"], since=_day(filters["from"]),
            until=_day(filters["to"], end=True)), before=before, limit=PAGE)
        names = self.queries.people().names
        more = len(entries) == PAGE
        query = {k: v for k, v in filters.items() if v}
        return {"entries": [_row(e, names) for e in entries],
                "next_url": "/admin/audit?" + urlencode({**query, "before": entries[-1].seq})
                if more else "",
                "first_url": "/admin/audit?" + urlencode(query) if before else ""}

    async def policy(self, request: Request, who: Operator) -> Response:
        view = await run_in_threadpool(self._policy_view)
        return self._page(request, who, "admin_policy.html", **view)

    def _policy_view(self) -> dict[str, Any]:
        current = self.rt.policy_version
        versions = self.queries.policy_versions(20)
        previous = next((v for v in versions if current and v.version < current.version), None)
        return {
            "current": {"version": current.version, "digest": current.digest,
                        "loaded": _when(current.loaded_at), "source": current.source,
                        "text": current.text} if current else None,
            "previous": {"version": previous.version, "loaded": _when(previous.loaded_at)}
            if previous else None,
            "diff": policy_diff(previous, current) if current else "",
            "versions": [{"version": v.version, "digest": v.digest[:16],
                          "loaded": _when(v.loaded_at)} for v in versions],
            "rules": [{"name": r.name, "mode": "report" if r.report or self.rt.policy.report
                       else "enforce", "description": r.description}
                      for r in self.rt.policy.rules],
        }

    async def notifications(self, request: Request, who: Operator) -> Response:
        letters = await run_in_threadpool(self.queries.dead_letters)
        return self._page(request, who, "admin_notifications.html", letters=[
            {"at": _when(x.created_at), "target": x.target, "event": x.event,
             "attempts": x.attempts, "error": x.last_error} for x in letters])

    async def dashboard(self, request: Request, who: Operator) -> Response:
        period = request.query_params.get("period", "7d")
        period = period if period in PERIODS else "7d"
        view = await run_in_threadpool(self._dashboard, period, self.pages.translator(request))
        return self._page(request, who, "admin_dashboard.html", period=period,
                          periods=list(PERIODS), **view)

    def _dashboard(self, period: str, say: Say) -> dict[str, Any]:
        length, bucket, label = PERIODS[period]
        now = self.rt.now()
        since = (now // bucket + 1) * bucket - length
        activity = self.queries.activity(since=since, until=now + 1, bucket=bucket)
        tallies = activity.tallies
        starts = [since + i * bucket for i in range(int(length // bucket))]
        series: dict[str, list[float]] = {k: [0.0] * len(starts)
                                          for k in ("allow", "step_up", "deny")}
        for start, decision, count in activity.timeline:
            index = int((start - since) // bucket)
            if 0 <= index < len(starts):
                key = decision if decision in series else "deny"
                series[key][index] += count
        started: dict[str, int] = {}
        passed: dict[str, int] = {}
        tried: dict[str, int] = {}  # per factor: verifications answered (passed or failed)
        rules: dict[str, int] = {}
        lockouts = 0
        for t in tallies:
            if t.kind == "challenge" and t.outcome == "started":
                started[t.rule or "-"] = started.get(t.rule or "-", 0) + t.entries
            if t.kind == "verification" and t.outcome == "passed":
                passed[t.factor or "-"] = passed.get(t.factor or "-", 0) + t.entries
            if t.kind == "verification" and t.factor and (
                    t.outcome in ("passed", "refused") or t.outcome.startswith("failed:")):
                tried[t.factor] = tried.get(t.factor, 0) + t.entries
            if t.kind == "decision" and t.decision in ("step_up", "deny"):
                rules[t.rule or "-"] = rules.get(t.rule or "-", 0) + t.entries
            if t.kind == "verification" and t.outcome == "locked":
                lockouts += t.entries
        signals = sorted(activity.signals.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
        top_rules = sorted(rules.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
        factors = sorted(set(passed) | set(tried))
        total_started = sum(started.values())
        labels = [datetime.fromtimestamp(s, UTC).strftime(label) for s in starts]
        return {
            "charts": [
                (say(N_("Decisions over time")), charts.stacked(
                    say(N_("Decisions by outcome over time")), labels, series,
                    ident="decisions", say=say)),
                (say(N_("Step-ups started and passed")), charts.paired(
                    say(N_("Step-ups started and passed: challenges in all, then per factor the "
                           "proofs tried and passed")),
                    [(say(N_("all challenges")), total_started, sum(passed.values())),
                     *[(f, tried.get(f, 0), passed.get(f, 0)) for f in factors]],
                    ("started", "passed"),
                    ident="stepups", say=say)),
                (say(N_("Top rules (step-ups and denies)")), charts.bars(
                    say(N_("Rules that stepped up or denied most")), top_rules, ident="rules",
                    colour=charts.PALETTE["step_up"], say=say)),
                (say(N_("Top risk signals")), charts.bars(
                    say(N_("Risk signals seen most in decisions")), signals, ident="signals",
                    colour=charts.PALETTE["would"], say=say)),
                (say(N_("Lockouts")), charts.bars(
                    say(N_("Accounts locked after too many failures")),
                    [(say(N_("lockouts")), lockouts)], ident="lockouts",
                    colour=charts.PALETTE["deny"], say=say)),
            ],
            "tables": [(say(N_("Decisions")), [(labels[i], *(int(series[k][i]) for k in series))
                                               for i in range(len(labels))],
                        [say(N_("time")), *(say(charts.LEGEND[k]) for k in series)]),
                       (say(N_("Top rules")), top_rules,
                        [say(N_("rule")), say(N_("step-ups and denies"))]),
                       (say(N_("Top risk signals")), signals,
                        [say(N_("signal")), say(N_("decisions"))])],
        }

    # ------------------------------------------------------------------ actions

    async def verify_chain(self, request: Request, who: Operator) -> Response:
        refused = await self._form(request, who)
        if isinstance(refused, Response):
            return refused
        report = await run_in_threadpool(self.queries.verify)
        self.verified = (time.time(), report)
        say = self.pages.translator(request)
        text = say(N_("Ledger intact.")) if report.ok else say(
            N_("Ledger BROKEN: %(report)s")) % {"report": report}
        return RedirectResponse("/admin?" + urlencode({"m": text}), 303)

    async def revoke_session(self, request: Request, who: Operator) -> Response:
        form = await self._form(request, who)
        if isinstance(form, Response):
            return form
        target = await run_in_threadpool(self.queries.session, form.get("session_id", ""))
        if target is None:
            return self.pages.message(request, N_("No such session"), N_("It has ended."), 404,
                                       link=BACK)
        owner = await run_in_threadpool(self.queries.user, target.user_id)
        name = owner.username if owner else target.user_id
        say = self.pages.translator(request)
        place = target.ip or say(N_("an unknown address"))
        return await self._confirmed(
            request, who, form, say(N_("End this session of %(name)s?")) % {"name": name},
            say(N_("The session of %(name)s from %(place)s ends on its next request, on every "
                   "instance.")) % {"name": name, "place": place}, {"session_id": target.id},
            lambda: self.accounts.revoke_session(None, target.id, admin=who.user.id),
            say(N_("Session ended.")))

    async def disable_user(self, request: Request, who: Operator) -> Response:
        return await self._user_action(
            request, who, N_("Disable %(name)s?"), N_(
                "%(name)s can no longer sign in, and every session of theirs ends on its next "
                "request."),
            lambda user: self.accounts.disable_user(user.id, by=who.user.id),
            N_("%(name)s disabled."), not_self=True)

    async def unlock_user(self, request: Request, who: Operator) -> Response:
        return await self._user_action(
            request, who, N_("Unlock %(name)s?"), N_(
                "This lifts every lock and back-off that failed sign-in and step-up attempts put "
                "on %(name)s, so that attempts from any address are accepted again. Do it only "
                "after you have checked that the attempts were not this person's, or have reset "
                "their password."),
            lambda user: self.accounts.unlock(user.id, by=who.user.id), N_("%(name)s unlocked."))

    async def end_sessions(self, request: Request, who: Operator) -> Response:
        return await self._user_action(
            request, who, N_("End every session of %(name)s?"), N_(
                "Every browser and client of %(name)s must sign in again."),
            lambda user: self.accounts.end_sessions(user.id, by=who.user.id),
            N_("Sessions of %(name)s ended."))

    async def reset_factors(self, request: Request, who: Operator) -> Response:
        return await self._user_action(
            request, who, N_("Reset the sign-in methods of %(name)s?"), N_(
                "This removes the authenticator apps, passkeys, push devices and recovery codes "
                "of %(name)s and ends their sessions; they keep their password and must enrol a "
                "second factor again. Confirm the person's identity out of band first."),
            lambda user: self.accounts.reset_factors(user.id, by=who.user.id),
            N_("Sign-in methods of %(name)s reset."), not_self=True)

    async def create_user(self, request: Request, who: Operator) -> Response:
        form = await self._form(request, who)
        if isinstance(form, Response):
            return form
        username = form.get("username", "").strip()
        groups = tuple(g.strip() for g in form.get("groups", "").split(",") if g.strip())
        problem = _username_problem(username) or _groups_problem(groups)
        taken = await run_in_threadpool(self.queries.user_named, username)
        if problem is None and taken is not None:
            problem = N_("That username is taken.")
        if problem:
            return self.pages.message(request, N_("Cannot create the user"), problem, 400,
                                       link=BACK)
        fields = {"username": username, "display_name": form.get("display_name", "")[:200],
                  "email": form.get("email", "")[:254], "groups": ",".join(groups)}
        if form.get("confirm") != "yes":
            say = self.pages.translator(request)
            text = say(N_("%(name)s gets a one-time password, shown once on the next page, and "
                          "the groups %(groups)s.") if groups else N_(
                "%(name)s gets a one-time password, shown once on the next page."))
            return self._page(request, who, "admin_confirm.html",
                              heading=say(N_("Create %(name)s?")) % {"name": username},
                              text=text % {"name": username, "groups": ", ".join(groups)},
                              action=request.url.path, fields=fields)
        password = secrets.token_urlsafe(15)
        await run_in_threadpool(lambda: self.accounts.add_user(
            username, password=password, display_name=fields["display_name"],
            email=fields["email"], groups=groups))
        return self._page(request, who, "admin_created.html", username=username,
                          password=password)

    async def _user_action(self, request: Request, who: Operator, heading: str, text: str,
                           act: Callable[[UserRecord], object], done: str, *,
                           not_self: bool = False) -> Response:
        form = await self._form(request, who)
        if isinstance(form, Response):
            return form
        user = await run_in_threadpool(self.queries.user, form.get("user_id", ""))
        if user is None:
            return self.pages.message(request, N_("No such user"),
                                       N_("That user does not exist."), 404, link=BACK)
        if not_self and user.id == who.user.id:
            return self.pages.message(request, N_("Not on yourself"), N_(
                "Ask another administrator: this would lock you out."), 409, link=BACK)
        say, name = self.pages.translator(request), {"name": user.username}
        return await self._confirmed(request, who, form, say(heading) % name, say(text) % name,
                                     {"user_id": user.id}, lambda: act(user), say(done) % name)

    async def _confirmed(self, request: Request, who: Operator, form: dict[str, str],
                         heading: str, text: str, fields: dict[str, str],
                         act: Callable[[], object], done: str) -> Response:
        """The confirmation page, or (with `confirm=yes`) the action and back to the console."""
        if form.get("confirm") != "yes":
            return self._page(request, who, "admin_confirm.html", heading=heading, text=text,
                              action=request.url.path, fields=fields)
        await run_in_threadpool(act)
        return RedirectResponse("/admin?" + urlencode({"m": done}), 303)

    async def _form(self, request: Request, who: Operator) -> dict[str, str] | Response:
        try:
            return await self.pages.form(request, who.session)
        except CsrfRejected:
            return self.pages.message(request, N_("Request refused"), N_(
                "The form expired or came from another site; open the console and try again."),
                403, link=BACK)


def _row(entry: AuditEntry, names: dict[str, str]) -> dict[str, Any]:
    request = entry.request
    return {"seq": entry.seq, "at_text": _when(entry.at), "kind": entry.kind,
            "subject": names.get(entry.subject, entry.subject), "rule": entry.rule,
            "decision": entry.decision, "outcome": entry.outcome, "factor": entry.factor,
            "request": f"{request.get('method', '')} {request.get('host', '')}"
                       f"{request.get('path', '')}".strip(),
            "reasons": list(entry.reasons)}


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _day(value: str, *, end: bool = False) -> float | None:
    """A YYYY-MM-DD filter as epoch seconds (UTC; `end` = the day after); None if not a date."""
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return day.timestamp() + (86400.0 if end else 0.0)


def _username_problem(username: str) -> str | None:
    if not 1 <= len(username) <= 64 or not all(c.isalnum() or c in "._-@" for c in username):
        return N_("A username is 1 to 64 letters, digits and . _ - @.")
    return None


def _groups_problem(groups: tuple[str, ...]) -> str | None:
    if len(groups) > 20 or any(len(g) > 64 or not g.replace("-", "").replace("_", "").isalnum()
                               for g in groups):
        return N_("Groups are up to 20 names of letters, digits, - and _.")
    return None
