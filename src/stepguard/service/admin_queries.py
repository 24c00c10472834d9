"""What the admin console reads, as bounded queries: users and sessions, the ledger's state and
pages, aggregates for the dashboard and report-mode counts, policy versions, dead letters.

Every ledger read is one indexed page or one database aggregate (`AuditStats`), never a read of
the whole ledger. Views (web/admin.py) word and draw what these return.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stepguard.audit.commands import verify_log
from stepguard.audit.ledger import AuditEntry, VerifyReport
from stepguard.service.idp import sources
from stepguard.service.runtime import Runtime
from stepguard.storage.audit_stats import AuditStats, Tally
from stepguard.storage.audit_store import LedgerState
from stepguard.storage.dead_letters import DeadLetters, StoredDeadLetter
from stepguard.storage.policy_versions import PolicyVersion, PolicyVersions
from stepguard.storage.records import SessionRecord, UserRecord

USERS = 500
SIGNAL_SAMPLE = 1000


@dataclass(frozen=True, slots=True)
class AuditFilters:
    user: str = ""  # username or subject id
    rule: str = ""
    outcome: str = ""
    kind: str = ""
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True, slots=True)
class People:
    users: tuple[UserRecord, ...]
    factor_counts: dict[str, int]
    sources: dict[str, str]  # user id -> `local` or the identity provider that made the user
    sessions: tuple[SessionRecord, ...]

    @property
    def names(self) -> dict[str, str]:
        return {u.id: u.username for u in self.users}


@dataclass(frozen=True, slots=True)
class Activity:
    """A period's aggregates: tallies, the decision timeline, the signals of recent decisions."""

    tallies: tuple[Tally, ...] = ()
    timeline: tuple[tuple[float, str, int], ...] = ()
    signals: dict[str, int] = field(default_factory=dict)


class AdminQueries:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        engine = getattr(runtime.store, "engine", None)
        self.stats = AuditStats(engine) if engine is not None else None
        self.letters = DeadLetters(engine) if engine is not None else None
        self.versions = PolicyVersions(engine) if engine is not None else None

    def people(self) -> People:
        store = self.rt.store
        users = store.users.list(limit=USERS)
        return People(users, {u.id: len(store.factors.for_user(u.id)) for u in users},
                      sources(store, [u.id for u in users]),
                      tuple(s for u in users for s in store.sessions.list_for_user(u.id)))

    def user(self, user_id: str) -> UserRecord | None:
        return self.rt.store.users.get(user_id)

    def user_named(self, username: str) -> UserRecord | None:
        return self.rt.store.users.by_username(username)

    def session(self, session_id: str) -> SessionRecord | None:
        return self.rt.store.sessions.get(session_id)

    def ledger(self) -> LedgerState:
        return self.rt.audit_log.state()

    def verify(self) -> VerifyReport:
        """Every entry re-checked (the console's "verify now"; the whole chain, on request)."""
        return verify_log(self.rt.audit_log, public_key=None)

    def page(self, filters: AuditFilters, *, before: int | None,
             limit: int) -> list[AuditEntry]:
        subject = filters.user
        if subject:
            user = self.user_named(subject)
            subject = user.id if user is not None else subject
        return self.rt.audit_log.latest(
            before_seq=before, limit=limit, subject=subject or None,
            rule=filters.rule or None, outcome=filters.outcome or None,
            kind=filters.kind or None, since=filters.since, until=filters.until)

    def activity(self, *, since: float, until: float, bucket: float = 0.0) -> Activity:
        if self.stats is None:
            return Activity()
        timeline = self.stats.timeline(since=since, until=until, bucket=bucket) if bucket else []
        return Activity(tuple(self.stats.tallies(since=since, until=until)), tuple(timeline),
                        self._signals(since, until))

    def _signals(self, since: float, until: float) -> dict[str, int]:
        """Signals of the latest `SIGNAL_SAMPLE` decisions of the period (one indexed page)."""
        counts: dict[str, int] = {}
        for entry in self.rt.audit_log.latest(kind="decision", since=since, until=until,
                                              limit=SIGNAL_SAMPLE):
            for name in entry.detail.get("signals", []) or []:
                counts[str(name)] = counts.get(str(name), 0) + 1
        return counts

    def policy_versions(self, limit: int = 20) -> list[PolicyVersion]:
        return self.versions.latest(limit) if self.versions else []

    def dead_letters(self) -> list[StoredDeadLetter]:
        return self.letters.recent() if self.letters else []

    def dead_letter_count(self) -> int:
        return self.letters.count() if self.letters else 0
