"""The decision flow: load state → risk → `core.decide()` → consume a grant → audit.

Adapters (forward-auth, reverse proxy, ASGI middleware, decision API) build a `RequestContext`
and call `Guard.check`; they only translate its `Check` into their protocol. Any store failure
raises `StoreUnavailable`, which adapters turn into a challenge or a 503 — never an allow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stepguard.audit.ledger import request_summary
from stepguard.core.context import RequestContext, SessionState, Subject
from stepguard.core.decide import decide
from stepguard.core.decision import Decision, Outcome
from stepguard.core.levels import Level
from stepguard.core.risk import NO_RISK, RiskAssessment, assess
from stepguard.service.runtime import Runtime, hash_token
from stepguard.storage.records import SessionRecord, UserRecord

TOUCH_EVERY = 30.0  # seconds between last-seen writes for one session


@dataclass(frozen=True)
class Check:
    """One decision with what it was made from."""

    decision: Decision
    context: RequestContext
    session: SessionRecord | None
    user: UserRecord | None
    risk: RiskAssessment

    @property
    def subject(self) -> Subject | None:
        return self.user.subject() if self.user else None


class Guard:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def session_for(self, token: str | None) -> tuple[SessionRecord, UserRecord] | None:
        """The live session of a token, or None (unknown, revoked, disabled user, expired)."""
        if not token or len(token) > 256:
            return None
        record = self.rt.store.sessions.by_token_hash(hash_token(token))
        if record is None:
            return None
        user = self.rt.store.users.get(record.user_id)
        if user is None or user.disabled or not self._alive(record):
            return None
        return record, user

    def _alive(self, record: SessionRecord) -> bool:
        settings = self.rt.policy.levels[Level.AAL1]
        now = self.rt.now()
        return now - record.created <= settings.max_session and now - record.last_seen <= settings.idle

    def check(self, context: RequestContext, token: str | None, *, audit: bool = True) -> Check:
        found = self.session_for(token)
        record, user = found if found else (None, None)
        state = record.state(user.subject()) if record and user else None
        risk = self._risk(context, state, user)
        now = self.rt.now()
        grants = self.rt.store.grants.active_for_session(record.id, now=now) if record else ()
        decision = decide(self.rt.policy, context, state, risk, grants, now)
        if decision.consume_grant and not self._consume(decision, record):
            spent = [g for g in grants if g.id != decision.consume_grant]
            decision = decide(self.rt.policy, context, state, risk, spent, now)
        if record is not None:
            self._touch(record, context, now)
        result = Check(decision, context, record, user, risk)
        if audit:
            self._audit(result)
        return result

    def _consume(self, decision: Decision, record: SessionRecord | None) -> bool:
        assert record is not None
        return self.rt.store.grants.consume(decision.consume_grant, session_id=record.id,
                                            now=self.rt.now())

    def _risk(self, context: RequestContext, state: SessionState | None,
              user: UserRecord | None) -> RiskAssessment:
        if user is None:
            return NO_RISK
        history = self.rt.store.history.load(user.id)
        location = self.rt.locator.locate(context.client_ip) if context.client_ip else None
        return assess(context=context, session=state, history=history, location=location,
                      settings=self.rt.risk, now=self.rt.now())

    def _touch(self, record: SessionRecord, context: RequestContext, now: float) -> None:
        if now - record.last_seen >= TOUCH_EVERY:
            self.rt.store.sessions.touch(record.id, now=now, ip=context.client_ip or record.ip,
                                         user_agent=context.user_agent or record.user_agent)

    def _audit(self, check: Check) -> None:
        d = check.decision
        self.rt.record(kind="decision", subject=check.user.id if check.user else "",
                       session_id=check.session.id if check.session else "",
                       request=request_summary(check.context, ip_key=self.rt.ip_key),
                       decision=d.outcome.value, rule=d.rule, reasons=d.reasons,
                       outcome="login" if d.login else d.outcome.value,
                       detail=_detail(d, check.risk))


def _detail(decision: Decision, risk: RiskAssessment) -> dict[str, object]:
    detail: dict[str, object] = {"risk_score": risk.score, "risk_level": risk.level,
                                 "signals": list(risk.names)}
    if decision.grant_id:
        detail["grant"] = decision.grant_id
        detail["consumed"] = bool(decision.consume_grant)
    if decision.outcome is Outcome.STEP_UP and decision.requirement is not None:
        detail["level"] = decision.requirement.level.label
    return detail


def with_attributes(context: RequestContext, attributes: dict[str, object]) -> RequestContext:
    """The same request with extra attributes (adapters that read a body or query)."""
    return replace(context, attributes={**context.attributes, **attributes})
