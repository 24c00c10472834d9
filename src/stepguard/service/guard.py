"""The decision flow: load state → risk → `core.decide()` → consume a grant → audit.

Adapters (forward-auth, reverse proxy, ASGI middleware, decision API) build a `RequestContext`
and call `Guard.check`; they only translate its `Check` into their protocol. Any store failure
raises `StoreUnavailable`, which adapters turn into a challenge or a 503 — never an allow.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from stepguard.audit.ledger import request_summary
from stepguard.core.context import RequestContext, SessionState, Subject
from stepguard.core.decide import decide
from stepguard.core.decision import Decision, Outcome
from stepguard.core.errors import StoreUnavailable
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.core.risk import NO_RISK, RiskAssessment, RiskHistory, amount_of, assess
from stepguard.service.runtime import Runtime, hash_token
from stepguard.storage.records import SessionRecord, UserRecord

TOUCH_EVERY = 30.0  # seconds between last-seen writes for one session
AUDIT_INLINE_LIMIT = 1000  # queued audit entries above which decisions leave the event loop


@dataclass(frozen=True)
class Check:
    """One decision with what it was made from."""

    decision: Decision
    context: RequestContext
    session: SessionRecord | None
    user: UserRecord | None
    risk: RiskAssessment
    state: SessionState | None = None

    @property
    def subject(self) -> Subject | None:
        return self.user.subject() if self.user else None


@dataclass(frozen=True)
class _Loaded:
    """What one token's decisions need, as read at one store epoch."""

    epoch: int
    record: SessionRecord
    user: UserRecord
    grants: tuple[Grant, ...]
    history: RiskHistory


class SessionCache:
    """Bounded in-process cache of loaded sessions, valid only at the epoch it was filled at.

    Any change a decision depends on raises the store epoch (in the same transaction), so a
    revocation on any instance or from the CLI empties every instance's cache before the next
    request: each request costs one primary-key read instead of five.

    Why a poll and not a push (PostgreSQL LISTEN/NOTIFY or Redis pub/sub; measured by
    `bench/fleet.py`, figures in docs/deploy.md): a push arrives *after* the
    revoking commit, on another connection, so for a window (sub-millisecond typically,
    milliseconds under load, unbounded while the listener reconnects) another instance would
    still allow the revoked session. The poll reads the epoch in the request itself, so a
    request that starts after the commit always sees it: "the very next request, on every
    instance" holds by construction, and an unreachable store fails the request closed
    instead of leaving a stale cache in use.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._items: OrderedDict[str, _Loaded] = OrderedDict()
        self._epoch = -1
        self._lock = threading.Lock()

    def get(self, key: str, epoch: int) -> _Loaded | None:
        with self._lock:
            if epoch != self._epoch:
                self._items.clear()
                self._epoch = epoch
                return None
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, loaded: _Loaded) -> None:
        with self._lock:
            if loaded.epoch != self._epoch:
                return
            self._items[key] = loaded
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class Guard:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.cache = SessionCache()

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
        return (now - record.created <= settings.max_session
                and now - record.last_seen <= settings.idle)

    def load(self, token: str | None) -> _Loaded | None:
        """The session, user, grants and risk history of a token: from the cache if still valid."""
        if not token or len(token) > 256:
            return None
        self.rt.require_stores()  # a store known to be down: fail closed before any cache
        key, epoch = hash_token(token), self._epoch()
        cached = self.cache.get(key, epoch)
        if cached is not None:
            return cached if self._alive(cached.record) else None
        with self.rt.store.snapshot():  # one read transaction for everything the decision needs
            found = self.session_for(token)
            if found is None:
                return None
            record, user = found
            grants = self.rt.store.grants.active_for_session(record.id, now=self.rt.now())
            history = self.rt.store.history.load(user.id)
        loaded = _Loaded(epoch, record, user, grants, history)
        self.cache.put(key, loaded)
        return loaded

    def check_cached(self, context: RequestContext, token: str | None) -> Check | None:
        """The decision when it needs no store access beyond the epoch read on an open
        connection: cheap enough for the event loop. None means: use `check` in a thread (a
        cache miss, a grant to spend, a last-seen to write, a busy audit queue)."""
        if self.rt.audit.backlog > AUDIT_INLINE_LIMIT:
            return None
        loaded: _Loaded | None = None
        if token:
            try:
                epoch = self.rt.store.epoch_if_connected()
            except StoreUnavailable:  # maybe a connection from before a store restart:
                return None  # the thread path reads again on a fresh one (or fails closed)
            loaded = self.cache.get(hash_token(token), epoch) if epoch is not None else None
            if loaded is None or not self._alive(loaded.record):
                return None
            if self.rt.now() - loaded.record.last_seen >= TOUCH_EVERY:
                return None
        self.rt.require_stores()
        check = self._decide(context, loaded)
        decision = check.decision
        if decision.consume_grant or (decision.outcome is Outcome.STEP_UP and loaded is not None):
            return None  # spending a grant or starting a challenge writes: the slow path does it
        if decision.allowed and loaded is not None and amount_of(context) is not None:
            return None  # so does recording an allowed amount
        self._audit(check)
        return check

    def _epoch(self) -> int:
        """The store epoch, read once more on failure: a connection left over from before a
        store restart fails once and is replaced; a store that is really down fails both."""
        try:
            return self.rt.store.epoch()
        except StoreUnavailable:
            return self.rt.store.epoch()

    def check(self, context: RequestContext, token: str | None, *, audit: bool = True) -> Check:
        now = self.rt.now()
        loaded = self.load(token)
        result = self._decide(context, loaded)
        decision = result.decision
        if decision.consume_grant and not self._consume(decision, result.session):
            spent = [g for g in loaded.grants if g.id != decision.consume_grant] if loaded else []
            decision = decide(self.rt.policy, context, result.state, result.risk, spent, now)
            result = replace(result, decision=decision)
        if loaded is not None and token:
            self._touch(loaded, hash_token(token), context, now)
        self._remember_amount(result)
        if audit:
            self._audit(result)
        return result

    def _decide(self, context: RequestContext, loaded: _Loaded | None) -> Check:
        """Risk and `core.decide` over what `load` found (pure but for the location lookup)."""
        record, user = (loaded.record, loaded.user) if loaded else (None, None)
        state = record.state(user.subject()) if record and user else None
        risk = self._risk(context, state, user, loaded.history if loaded else None)
        grants = loaded.grants if loaded else ()
        decision = decide(self.rt.policy, context, state, risk, grants, self.rt.now())
        return Check(decision, context, record, user, risk, state)

    def _remember_amount(self, check: Check) -> None:
        """An allowed action's amount joins the user's baseline (`unusual_amount`)."""
        amount = amount_of(check.context)
        if check.decision.allowed and check.user is not None and amount is not None:
            self.rt.store.history.record_amount(check.user.id, amount)

    def _consume(self, decision: Decision, record: SessionRecord | None) -> bool:
        assert record is not None
        return self.rt.store.grants.consume(decision.consume_grant, session_id=record.id,
                                            now=self.rt.now())

    def _risk(self, context: RequestContext, state: SessionState | None,
              user: UserRecord | None, history: RiskHistory | None) -> RiskAssessment:
        if user is None or history is None:
            return NO_RISK
        location = self.rt.locator.locate(context.client_ip) if context.client_ip else None
        return assess(context=context, session=state, history=history, location=location,
                      settings=self.rt.risk, now=self.rt.now())

    def _touch(self, loaded: _Loaded, key: str, context: RequestContext, now: float) -> None:
        record = loaded.record
        if now - record.last_seen < TOUCH_EVERY:
            return
        self.rt.store.sessions.touch(record.id, now=now, ip=context.client_ip or record.ip,
                                     user_agent=context.user_agent or record.user_agent)
        self.cache.put(key, replace(loaded, record=replace(record, last_seen=now)))

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
