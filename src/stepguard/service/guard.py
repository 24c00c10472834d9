"""The decision flow: load state → risk → `core.decide()` → consume a grant → audit.

Adapters (forward-auth, reverse proxy, ASGI middleware, decision API) build a `RequestContext`
and call `Guard.check`; they only translate its `Check` into their protocol. The MCP door calls
`Guard.judge` with an agent's state, bearer tokens `Guard.judge_token`: one flow for every door.
Any store failure raises `StoreUnavailable`, which adapters turn into a challenge or a 503 —
never an allow.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from stepguard.audit.ledger import AuditEvent, AuditKind, request_summary
from stepguard.audit.replay import DecisionInput
from stepguard.audit.summary import Who
from stepguard.core.context import RequestContext, SessionState, Subject
from stepguard.core.decide import decide
from stepguard.core.decision import Decision, Outcome, Requirement
from stepguard.core.errors import Conflict, StoreUnavailable
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.core.policy import Policy
from stepguard.core.risk import FADING, NO_RISK, RiskAssessment, RiskHistory, amount_of, assess
from stepguard.service.runtime import MAX_TOKEN, Runtime, token_key
from stepguard.storage.records import SessionRecord, SessionSnapshot, UserRecord, Versions
from stepguard.storage.session_states import UNKNOWN
from stepguard.storage.version_board import Mark, VersionBoard

TOUCH_EVERY = 30.0  # seconds between last-seen writes for one session
STORE_CONTACT_EVERY = 1.0  # seconds a board hit may go without any read reaching the store
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
    grants: tuple[Grant, ...] = ()
    versions: tuple[int, int] | None = None  # the session's and user's, as decided on
    at: float | None = None  # the clock when (first) decided: an answer's end counts from it

    @property
    def subject(self) -> Subject | None:
        return self.user.subject() if self.user else None

    def input(self, attributes: frozenset[str] = frozenset()) -> DecisionInput:
        """What this decision was made from, for the ledger (what-if replay)."""
        return DecisionInput(self.context, self.state, self.grants, attributes, self.risk)

    def as_json(self) -> dict[str, object]:
        """The decision input as JSON (a plain allow's summary holds the check itself and
        calls this in the audit writer's thread)."""
        return self.input().as_json()

    def risk_detail(self) -> dict[str, object]:
        return self.input().risk_detail()


@dataclass(frozen=True, slots=True)
class Loaded:
    """What one token's decisions need, valid while its session's and user's versions hold."""

    record: SessionRecord
    user: UserRecord
    grants: tuple[Grant, ...]
    history: RiskHistory
    versions: tuple[int, int]
    mark: Mark | None = None  # the version board's mark taken before the read that confirmed it
    state: SessionState = field(init=False)  # what the core sees, built once per copy
    # plain allows given from this copy, by request context (see `Guard._remember`)
    answers: dict[int, Answer] = field(init=False, default_factory=dict, repr=False,
                                       compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", self.record.state(self.user.subject()))

    @classmethod
    def of(cls, snapshot: SessionSnapshot, mark: Mark | None) -> Loaded:
        return cls(snapshot.record, snapshot.user, snapshot.grants, snapshot.history,
                   snapshot.versions.pair, mark)

    def seen(self, versions: Versions) -> Loaded:
        """This copy with the store's last-seen time when another instance saw it later."""
        if versions.last_seen <= self.record.last_seen:
            return self
        return replace(self, record=replace(self.record, last_seen=versions.last_seen))


@dataclass(frozen=True, slots=True)
class Answer:
    """A plain allow given from one cached copy for one request context, valid until `until`."""

    context: RequestContext
    check: Check
    until: float
    who: Who | None  # its line in the allow summary (None: each allow is its own entry)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A cached live session's versions (`Guard.lease`), which a caller may take again without
    asking the guard while the version board still shows `mark` for the session's and user's
    slots, from `since` and before `until` (-inf: this reading only)."""

    versions: tuple[int, int]
    session_id: str
    user_id: str
    mark: Mark | None
    since: float  # the store contact it rests on: a clock reading before it (stepped back) ends it
    until: float


SUMMARY_MARGIN = 0.25  # seconds before a summary interval closes that held counts reach it
ANSWERS_PER_COPY = 64  # remembered plain allows per cached session copy (then started afresh)
CLOCK_NAMES = frozenset({"session.age", "session.idle", "session.auth_age"})


def memo_safe(policy: Policy) -> bool:
    """Whether a plain allow may be given again, unchanged, until `Guard.horizon`: no rule's
    condition reads a duration that grows with the clock (`hour()` and the session's level
    change only at the times the horizon stops at)."""
    return not any(rule.when is not None and rule.when.names & CLOCK_NAMES
                   for rule in (*policy.rules, policy.default))


class _Flight:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class SessionCache:
    """Bounded LRU of loaded sessions by token hash, each valid while its versions hold.

    Invalidation is per session and per user, never global: every request reads its session's
    and user's versions (one indexed row; `SessionStates.read` loads the session only when they
    moved), so a revocation on any instance or from the CLI is
    honoured by the next request everywhere, while a sign-in or step-up of one user leaves every
    other user's entry warm. Why a read per request and not a push (PostgreSQL LISTEN/NOTIFY or
    Redis pub/sub): docs/architecture.md, with the figures.

    `flight(key)` is a per-key lock: one load per session key at a time (single-flight); the
    requests that waited then only compare versions.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._items: OrderedDict[str, Loaded] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Loaded | None:
        found = self._items.get(key)
        if found is not None:  # one C call under the GIL; an eviction racing it is harmless
            try:  # noqa: SIM105 (the per-request path: `suppress` builds an object per call)
                self._items.move_to_end(key)
            except KeyError:
                pass
        return found

    def put(self, key: str, loaded: Loaded) -> None:
        with self._lock:
            self._items[key] = loaded
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    @contextlib.contextmanager
    def flight(self, key: str) -> Iterator[None]:
        """Hold the key's load lock (callers for the same key queue behind it)."""
        with self._lock:
            flight = self._flights.setdefault(key, _Flight())
            flight.users += 1
        try:
            with flight.lock:
                yield
        finally:
            with self._lock:
                flight.users -= 1
                if flight.users == 0:
                    del self._flights[key]

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class Guard:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.cache = SessionCache()
        self._plain = _plain_rules(runtime.policy)
        self._attributes = frozenset(runtime.policy.attributes)
        self._board = runtime.store.version_board
        self._batches = runtime.store.session_states.batches
        self.memo_ok = memo_safe(runtime.policy)
        self._aal1 = runtime.policy.levels[Level.AAL1]
        self._contact = float("-inf")  # when a read last reached the store

    def session_for(self, token: str | None) -> tuple[SessionRecord, UserRecord] | None:
        """The live session of a token, or None (unknown, revoked, disabled user, expired)."""
        loaded = self.load(token)
        return (loaded.record, loaded.user) if loaded else None

    def _alive(self, loaded: Loaded, now: float | None = None) -> bool:
        record = loaded.record
        settings = self._aal1
        now = self.rt.now() if now is None else now
        return (not loaded.user.disabled and now - record.created <= settings.max_session
                and now - record.last_seen <= settings.idle)

    def load(self, token: str | None) -> Loaded | None:
        """The session, user, grants and risk history of a token, as of this moment: the cached
        copy once its versions are read unchanged, or a fresh load (one load per token at a
        time; concurrent requests for it wait, then only compare versions)."""
        key = token_key(token)
        return self.load_key(key) if key else None

    def load_key(self, key: str) -> Loaded | None:
        """`load` by the token's hash (a door that holds a session reference, not its cookie)."""
        self.rt.require_stores()  # a store known to be down: fail closed before any cache
        cached = self.cache.get(key)
        if cached is not None:  # the versions read; a load only if they moved
            found = self._read(key, cached)
        else:
            with self.cache.flight(key):  # re-read the cache: a load just ended may have filled it
                found = self._read(key, self.cache.get(key))
        return found if found is not None and self._alive(found) else None

    def _read(self, key: str, cached: Loaded | None, *, connect: bool = True,
              read: Versions | None = None, now: float | None = None) -> Loaded | None:
        """None (no live session), the cached copy (versions unchanged, last seen brought up
        to date) or a fresh copy (now cached).

        With a version board (SQLite), a cached copy whose mark is unchanged needs no read at
        all (`storage.version_board` says why that still honours every revocation by the next
        request) — unless no read reached the store for `STORE_CONTACT_EVERY` seconds (a dead
        store is noticed within that time) or the copy looks expired (another process may have
        seen the session since). `read`: the cached copy's unchanged versions, read by a
        statement sent after the request arrived (`check_cached_key_async`); `now`: the
        caller's clock reading, if it took one."""
        now = self.rt.now() if now is None else now
        mark = None
        if cached is not None and self._board is not None:
            mark = self._board.mark(cached.record.id, cached.user.id)
            if (mark is not None and mark == cached.mark
                    and 0 <= now - self._contact < STORE_CONTACT_EVERY  # not if stepped back
                    and self._alive(cached, now)):
                self.cache.hits += 1
                self.rt.observer.cache_hit()
                return cached
        known = cached.versions if cached is not None else UNKNOWN
        found: Versions | SessionSnapshot | None = read
        if found is None:
            try:
                found = self.rt.store.session_states.read(key, known=known, now=now,
                                                          connect=connect)
            except StoreUnavailable:
                if not connect:
                    raise
                # maybe a connection from before a store restart: one retry on a fresh one
                found = self.rt.store.session_states.read(key, known=known, now=now)
        self._contact = now
        if found is None:
            self.cache.drop(key)
            return None
        if isinstance(found, Versions):
            assert cached is not None
            self.cache.hits += 1
            self.rt.observer.cache_hit()
            fresh = cached.seen(found)
            if mark != fresh.mark:
                fresh = replace(fresh, mark=mark)
            if fresh is not cached:
                self.cache.put(key, fresh)
            return fresh
        self.cache.misses += 1
        self.rt.observer.cache_miss()
        loaded = Loaded.of(found, mark)  # a first load has no mark: its next use reads
        self.cache.put(key, loaded)
        return loaded

    def check_cached(self, context: RequestContext, token: str | None) -> Check | None:
        """The decision when it needs one statement on an open connection and nothing else:
        cheap enough for the event loop. None means: use `check` in a thread (no cached copy
        yet, a load in flight, a grant to spend, a challenge to start, a busy audit queue)."""
        if token and len(token) > MAX_TOKEN:
            return None
        return self.check_cached_key(context, token_key(token))

    async def check_cached_key_async(self, context: RequestContext,
                                     key: str | None) -> Check | None:
        """`check_cached_key` with the versions read awaited, not blocking the event loop: on
        PostgreSQL the read joins the next batched statement (`storage.version_batches`, sent
        after this request queued it, so it sees every change committed before). None: take
        the thread path (not cached, loading, changed, gone, or the store did not answer)."""
        batches = self._batches
        if batches is None or not key or self.rt.audit.backlog > AUDIT_INLINE_LIMIT:
            return self.check_cached_key(context, key)
        cached = self.cache.get(key)
        if cached is None or self.cache.in_flight(key):
            return None
        self.rt.require_stores()
        try:
            found = await batches.read(key)
        except StoreUnavailable:
            return None
        if found is None or found.pair != cached.versions:
            return None  # gone or changed: the thread path reads again, loads and answers
        return self.check_cached_key(context, key, confirmed=(cached, found))

    def check_cached_key(self, context: RequestContext, key: str | None, *,
                         confirmed: tuple[Loaded, Versions] | None = None) -> Check | None:
        """`check_cached` by the session token's hash (`confirmed`: a cached copy and its
        versions as just read, see `check_cached_key_async`)."""
        if self.rt.audit.backlog > AUDIT_INLINE_LIMIT:
            return None
        loaded: Loaded | None = None
        if key:
            loaded = self._cached_live(key, context, confirmed)
            if loaded is None:
                return None
            again = loaded.answers.get(id(context))  # the entry holds the context: ids are unique
            if again is not None:
                now = self.rt.now()
                if now < again.until:
                    self._audit_again(again, now)
                    return again.check
        self.rt.require_stores()
        check = self._decide(context, loaded)
        decision = check.decision
        if decision.consume_grant or (decision.outcome is Outcome.STEP_UP and loaded is not None):
            return None  # spending a grant or starting a challenge writes: the slow path does it
        if decision.allowed and loaded is not None and amount_of(context) is not None:
            return None  # so does recording an allowed amount
        self._audit(check)
        if loaded is not None:
            self._remember(loaded, check)
        return check

    def _remember(self, loaded: Loaded, check: Check) -> None:
        """Keep a plain allow (no fading risk signal) on the copy it was decided from, to be given
        again for the same context (the same object: adapters that memoise their reading of a
        request hand the same one) until `horizon`. The copy is replaced when its versions or
        last-seen time move, so a revocation, a step-up or a new sign-in starts afresh; every
        use still reads the version board (or the store) and checks the session is alive."""
        d = check.decision
        if (not self.memo_ok or not self.plain_allow(check)
                or not FADING.isdisjoint(check.risk.names) or d.shadow is not None
                or check.context.attributes or amount_of(check.context) is not None
                or check.at is None):
            return
        answers = loaded.answers
        if len(answers) >= ANSWERS_PER_COPY:
            answers.clear()
        until = self.horizon(loaded.state, check.at)  # from the decision's time, not later
        answers[id(check.context)] = self.answer(check, until)

    def horizon(self, state: SessionState, now: float) -> float:
        """Until when a plain allow without fading risk signals stays the same answer: the end
        of the UTC hour (`hour()`, `unusual_hour`), and the first expiry of any authentication
        event (the session's level, and what rules read of it). Nothing else in a decision
        moves with the clock but durations (`memo_safe`) and the `FADING` signals."""
        until = (now // 3600 + 1) * 3600
        levels, idle_from = self.rt.policy.levels, state.last_seen
        for event in state.events:
            setting = levels.get(event.level)
            if setting is not None:
                until = min(until, event.at + setting.max_session, idle_from + setting.idle)
        return until

    def _cached_live(self, key: str, context: RequestContext,
                     confirmed: tuple[Loaded, Versions] | None = None) -> Loaded | None:
        """The cached copy of a live session as of this moment (versions read, last seen
        noted), without waiting: None when not cached, loading, gone, not alive or the store
        is not reachable on an open connection (the thread path reconnects or fails closed)."""
        cached, read = confirmed if confirmed is not None else (self.cache.get(key), None)
        if cached is None or (read is None and self.cache.in_flight(key)):
            return None
        self.rt.require_stores()
        now = self.rt.now()
        try:
            loaded = self._read(key, cached, connect=False, read=read, now=now)
        except StoreUnavailable:
            return None
        if loaded is None or not self._alive(loaded, now):
            return None
        self._touch(loaded, key, context, now)
        return loaded

    def lease(self, key: str, context: RequestContext) -> Lease | None:
        """The session's and user's versions as of this moment (the revocation check, for a
        cached live session; None: take the full path), with how long they may be taken again
        without the guard: while the board shows the mark they were confirmed under (no write
        on either slot since, so the versions hold: `_read`'s argument,
        `storage.version_board`) and before this guard's hit path would do more than compare
        that mark — reach the store (`STORE_CONTACT_EVERY`), note the session as seen
        (`TOUCH_EVERY`) or find it expired. Nothing beyond this reading without a board, under
        a mark taken while a write was in flight, or while another store is watched for
        failure (`Runtime.require_stores`)."""
        loaded = self._cached_live(key, context)
        if loaded is None:
            return None
        record, settings = loaded.record, self._aal1
        since, until = self._contact, float("-inf")
        if self._board is not None and loaded.mark is not None and self.rt.redis_watch is None:
            until = min(self._contact + STORE_CONTACT_EVERY,
                        record.last_seen + min(TOUCH_EVERY, settings.idle),
                        record.created + settings.max_session)
        return Lease(versions=loaded.versions, session_id=record.id, user_id=loaded.user.id,
                     mark=loaded.mark, since=since, until=until)

    @property
    def board(self) -> VersionBoard | None:
        """The version board a `Lease` is checked against (None: no lease outlives a reading)."""
        return self._board

    def leased(self, times: int) -> None:
        """Count `times` versions taken again from leases as cache hits (they are)."""
        self.cache.hits += times
        self.rt.observer.cache_hit(times)

    def plain_allow(self, check: Check) -> bool:
        """An allow that needs nothing but a live sign-in (no grant, nothing above aal1, low
        risk): the same answer for the same request while the versions hold."""
        d = check.decision
        return (d.allowed and not d.grant_id and check.risk.level == "low"
                and self._plain.get(d.rule, False))

    def answer(self, check: Check, until: float) -> Answer:
        """A plain allow to give again, unchanged, until `until` (see `lease`): its
        summary line is found once, here."""
        return Answer(check.context, check, until, self._who(check))

    def audit_due(self, again: Answer, now: float) -> float:
        """When counts of `again`, given again at `now`, must reach the audit at the latest:
        `now` for an allow that is its own sealed entry; else before the next whole second (the
        metrics lag at most that) and `SUMMARY_MARGIN` before its summary interval closes, so
        counts held together fall in one interval and reach it before the writer closes it."""
        summary = self.rt.audit.summary
        if summary is None or again.who is None:
            return now
        interval = summary.interval
        closes = (math.floor(now / interval) + 1) * interval
        return min(math.floor(now) + 1.0, closes - SUMMARY_MARGIN)

    def audit(self, again: Answer, now: float, times: int = 1) -> None:
        """Audit an allow given again without change (see `answer`), `times` at once."""
        self._audit_again(again, now, times)

    def check(self, context: RequestContext, token: str | None, *, audit: bool = True) -> Check:
        return self.check_key(context, token_key(token), audit=audit)

    def check_key(self, context: RequestContext, key: str | None, *,
                  audit: bool = True) -> Check:
        """`check` by the session token's hash (the postgres door holds the hash)."""
        loaded = self.load_key(key) if key else None
        return self.judge(context, loaded, key=key, audit=audit)

    def judge(self, context: RequestContext, loaded: Loaded | None, *, key: str | None = None,
              audit: bool = True, detail: Mapping[str, object] | None = None) -> Check:
        """The decision flow over what was loaded: decide → consume a single-use grant (decide
        again without it if another request spent it) → note the amount → audit. Every door
        comes through here (or through `judge_token`, which ends in the same steps): `check`
        with a session token, the MCP door with an agent's state (`key` None: nothing to note
        as seen; `detail` joins the audit entry, which is then always an entry of its own)."""
        check = self._decide(context, loaded)
        check = self._settle(check, loaded.grants if loaded else (), loaded=loaded, key=key,
                             audit=audit, detail=detail)
        if loaded is not None and key and detail is None:
            self._remember(loaded, check)
        return check

    def judge_token(self, context: RequestContext, state: SessionState | None, *,
                    grant_for: Callable[[Decision], Grant | None],
                    risk: RiskAssessment = NO_RISK,
                    detail: Mapping[str, object] | None = None) -> Check:
        """The decision flow for a state authenticated elsewhere (a bearer token's), which has
        no Stepguard session to hold grants: when the policy asks for a grant, the state's own
        authentication may stand in for one (`grant_for`, None when it does not reach the
        requirement); a single-use one is stored first, so that it is spent exactly once like
        any other. A bound requirement is refused (403): whoever authenticated the state never
        showed the user the bound values. Then the same steps as `judge`: consume → decide
        again → audit."""
        now = self.rt.now()
        decision = decide(self.rt.policy, context, state, risk, (), now)
        grants: tuple[Grant, ...] = ()
        requirement = decision.requirement
        if (state is not None and decision.outcome is Outcome.STEP_UP and requirement is not None
                and requirement.needs_grant):
            if requirement.bind:
                decision = _refuse_binding(decision)
            else:
                grant = grant_for(decision)
                if grant is not None:
                    if grant.single_use:
                        with contextlib.suppress(Conflict):  # spent (or being spent) already
                            self.rt.store.grants.add(grant)
                    grants = (grant,)
                    decision = decide(self.rt.policy, context, state, risk, grants, now)
        check = Check(decision, context, None, None, risk, state, grants)
        return self._settle(check, grants, detail=detail)

    def refused(self, context: RequestContext, decision: Decision, *, outcome: str,
                detail: Mapping[str, object]) -> Check:
        """A request refused before the policy could decide (a malformed or invalid credential):
        audited like any decision, with `outcome` naming why."""
        check = Check(decision, context, None, None, NO_RISK)
        self._audit(check, detail, outcome=outcome)
        return check

    def _settle(self, check: Check, grants: Sequence[Grant], *, loaded: Loaded | None = None,
                key: str | None = None, audit: bool = True,
                detail: Mapping[str, object] | None = None) -> Check:
        """After `core.decide`: spend the single-use grant it chose (if another request won it,
        decide again without it, and spend the one that decision chose) → note the session as
        seen → note the amount → audit."""
        decision = check.decision
        now = self.rt.now()
        left = list(grants)
        while decision.consume_grant and not self._consume(decision, check.state):
            # another request spent it first: decide without it, and spend what that chooses
            # (each grant is tried once, so this ends)
            left = [g for g in left if g.id != decision.consume_grant]
            decision = decide(self.rt.policy, check.context, check.state, check.risk, left, now)
        if decision is not check.decision:
            check = replace(check, decision=decision)  # `at` stays the first reading: an answer
            # given again ends no later than the hour of the first decision
        if loaded is not None and key:
            self._touch(loaded, key, check.context, now)
        self._remember_amount(check)
        if audit:
            self._audit(check, detail)
        return check

    def preview(self, context: RequestContext, loaded: Loaded | None) -> Check:
        """What `judge` would decide now, with nothing spent, noted or audited."""
        return self._decide(context, loaded)

    def judge_preview(self, check: Check, *,
                      detail: Mapping[str, object] | None = None) -> Check:
        """`judge` for a `preview` that spends no grant, without deciding again (the MCP door's
        plain allows: their only write is the queued audit entry when no amount is noted)."""
        assert not check.decision.consume_grant
        return self._settle(check, (), detail=detail)

    def _decide(self, context: RequestContext, loaded: Loaded | None) -> Check:
        """Risk and `core.decide` over what `load` found (pure but for the location lookup)."""
        record, user = (loaded.record, loaded.user) if loaded else (None, None)
        state = loaded.state if loaded else None
        risk = self._risk(context, state, user, loaded.history if loaded else None)
        grants = loaded.grants if loaded else ()
        now = self.rt.now()
        decision = decide(self.rt.policy, context, state, risk, grants, now)
        return Check(decision, context, record, user, risk, state, grants,
                     loaded.versions if loaded else None, now)

    def _remember_amount(self, check: Check) -> None:
        """An allowed action's amount joins the user's baseline (`unusual_amount`)."""
        amount = amount_of(check.context)
        if check.decision.allowed and check.user is not None and amount is not None:
            self.rt.store.history.record_amount(check.user.id, amount)

    def _consume(self, decision: Decision, state: SessionState | None) -> bool:
        assert state is not None  # the core grants nothing to a request without a session
        return self.rt.store.grants.consume(decision.consume_grant, session_id=state.id,
                                            now=self.rt.now())

    def _risk(self, context: RequestContext, state: SessionState | None,
              user: UserRecord | None, history: RiskHistory | None) -> RiskAssessment:
        if user is None or history is None:
            return NO_RISK
        location = self.rt.locator.locate(context.client_ip) if context.client_ip else None
        return assess(context=context, session=state, history=history, location=location,
                      settings=self.rt.risk, now=self.rt.now())

    def _touch(self, loaded: Loaded, key: str, context: RequestContext, now: float) -> None:
        """Note the session as seen (written behind, in batches) at most every `TOUCH_EVERY`."""
        record = loaded.record
        if now - record.last_seen < TOUCH_EVERY:
            return
        self.rt.last_seen.note(record.id, now=now, ip=context.client_ip or record.ip,
                               user_agent=context.user_agent or record.user_agent)
        current = self.cache.get(key)
        if current is not None and current.versions == loaded.versions:
            self.cache.put(key, replace(current, record=replace(current.record, last_seen=now)))

    def _audit(self, check: Check, extra: Mapping[str, object] | None = None, *,
               outcome: str = "") -> None:
        """Allows cost a counter (a plain allow in summary mode) or an unchecked event, checked
        and sealed in the audit writer's thread; every other decision is checked and logged
        here (they are few). Subject and session come from the state decided on (a Stepguard
        session's, an agent's or a bearer token's)."""
        d = check.decision
        if d.shadow is not None:
            self.rt.observer.shadowed(_outcome(d.shadow), d.shadow.rule)
        if d.outcome is Outcome.ALLOW:
            self._audit_allow(check, d, extra)
            return
        state = check.state
        self.rt.record(kind="decision", subject=state.subject.id if state else "",
                       session_id=state.id if state else "",
                       request=request_summary(check.context, ip_key=self.rt.ip_key),
                       decision=d.outcome.value, rule=d.rule, reasons=d.reasons,
                       outcome=outcome or _outcome(d),
                       detail={**_detail(d, check.risk), "input": check.input(self._attributes),
                               **(extra or {})})

    def _audit_allow(self, check: Check, d: Decision,
                     extra: Mapping[str, object] | None = None) -> None:
        rt, state, context = self.rt, check.state, check.context
        rt.observer.allowed(d.rule)
        summary = rt.audit.summary
        who = self._who(check) if extra is None else None
        if summary is not None and who is not None:
            summary.count(who, at=rt.now(), host=context.host, method=context.method,
                          path=context.path, input=check)
            return
        shadow = d.shadow
        event = AuditEvent.unchecked(
            at=rt.now(), kind=AuditKind.DECISION, subject=state.subject.id if state else "",
            session=rt.session_ref(state.id) if state else "",
            request=request_summary(context, ip_key=rt.ip_key), decision="allow",
            rule=shadow.rule if shadow else d.rule,
            reasons=shadow.reasons if shadow else d.reasons,
            outcome="would_" + _outcome(shadow) if shadow else "allow",
            detail={**_detail(d, check.risk), "input": check.input(self._attributes),
                    **(extra or {})})
        rt.audit.submit(event, checked=False)
        if rt.observer.debug:  # counted above: shown only
            rt.observer.show(event.checked())

    def _audit_again(self, again: Answer, now: float, times: int = 1) -> None:
        """Audit a remembered allow given again: a count on its summary line (or, when it
        has none, its own entry each time)."""
        summary = self.rt.audit.summary
        if summary is None or again.who is None:
            for _ in range(times):
                self._audit(again.check)
            return
        self.rt.observer.allowed(again.check.decision.rule, times)
        context = again.context
        summary.count(again.who, at=now, host=context.host, method=context.method,
                      path=context.path, input=again.check, times=times)

    def _who(self, check: Check) -> Who | None:
        """The allow's line in the summary, or None when it must be its own sealed entry (not
        a plain rule, a grant, raised risk, a report-mode shadow, request attributes, or the
        site audits every request)."""
        d, context = check.decision, check.context
        if (self.rt.audit.summary is None or not self._plain.get(d.rule, False) or d.grant_id
                or check.risk.level != "low" or d.shadow is not None or context.attributes):
            return None
        state, risk = check.state, check.risk
        events = state.events if state is not None else ()
        mark = (len(events), events[-1].at if events else 0.0, risk.score, len(risk.signals))
        return (state.subject.id if state else "",
                self.rt.session_ref(state.id) if state else "", d.rule, context.client_ip, mark)


def _plain_rules(policy: Policy) -> dict[str, bool]:
    """Per rule name: whether its allows are plain (nothing asked above a sign-in)."""
    return {rule.name: _plain(rule.requirement) for rule in (*policy.rules, policy.default)}


def _plain(requirement: Requirement | None) -> bool:
    return requirement is None or (requirement.level <= Level.AAL1 and not requirement.needs_grant
                                   and requirement.max_age is None and not requirement.methods)


def _outcome(decision: Decision) -> str:
    """A decision's outcome as the ledger names it (`login` for a first sign-in)."""
    return "login" if decision.login else decision.outcome.value


def _refuse_binding(decision: Decision) -> Decision:
    reason = ("This request must be approved on Stepguard's step-up page, which shows what is "
              "approved; an access token cannot approve a bound transaction.")
    return Decision(outcome=Outcome.DENY, rule=decision.rule,
                    reasons=(*decision.reasons, reason), requirement=decision.requirement,
                    scope=decision.scope, binding=decision.binding,
                    bound_values=decision.bound_values)


def _detail(decision: Decision, risk: RiskAssessment) -> dict[str, object]:
    detail: dict[str, object] = {"risk_score": risk.score, "risk_level": risk.level,
                                 "signals": list(risk.names)}
    shadow = decision.shadow
    if shadow is not None:  # report mode: what was enforced, and what would have been
        detail["enforced"] = {"outcome": decision.outcome.value, "rule": decision.rule}
        detail["report"] = {"outcome": _outcome(shadow), "rule": shadow.rule,
                            "reasons": list(shadow.reasons)}
        if shadow.requirement is not None:
            detail["report"]["level"] = shadow.requirement.level.label  # type: ignore[index]
    if decision.grant_id:
        detail["grant"] = decision.grant_id
        detail["consumed"] = bool(decision.consume_grant)
    if decision.binding:
        detail["binding"] = decision.binding
    if decision.outcome is Outcome.STEP_UP and decision.requirement is not None:
        detail["level"] = decision.requirement.level.label
    return detail


def with_attributes(context: RequestContext, attributes: dict[str, object]) -> RequestContext:
    """The same request with extra attributes (adapters that read a body or query)."""
    return replace(context, attributes={**context.attributes, **attributes})
