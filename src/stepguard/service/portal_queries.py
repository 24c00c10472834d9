"""Read-only queries behind the portal's account pages: each page's data in bounded reads (the
newest audit entries only, never the whole ledger), as records for the page to word. The admin
console's are in `admin_queries`."""

from __future__ import annotations

from dataclasses import dataclass

from stepguard.audit.ledger import AuditEntry
from stepguard.service.runtime import Runtime
from stepguard.service.stepup import StepUp
from stepguard.storage.records import FactorRecord, PushRecord, SessionRecord, UserRecord

ACCOUNT_EVENTS = 15
# Plain allows are the ledger's bulk and say nothing to the account holder.
NOISE = ("allow", "allow_summary")


@dataclass(frozen=True, slots=True)
class AccountOverview:
    """What the account page shows about one signed-in user."""

    factors: tuple[FactorRecord, ...]
    push_devices: tuple[FactorRecord, ...]
    sessions: tuple[SessionRecord, ...]
    known_devices: tuple[str, ...]
    events: tuple[AuditEntry, ...]
    pending_pushes: tuple[PushRecord, ...]
    has_password: bool


class PortalQueries:
    def __init__(self, runtime: Runtime, stepup: StepUp) -> None:
        self.rt, self.stepup = runtime, stepup

    def account(self, session: SessionRecord, user: UserRecord) -> AccountOverview:
        store = self.rt.store
        factors = tuple(
            f for f in store.factors.for_user(user.id)
            if f.data.get("confirmed", True) and f.kind != "push"
        )
        return AccountOverview(
            factors=factors,
            push_devices=tuple(self.stepup.push_devices(user.id)),
            sessions=tuple(store.sessions.list_for_user(user.id)),
            known_devices=tuple(sorted(store.history.load(user.id).known_devices)),
            events=tuple(self.rt.audit_log.latest(limit=ACCOUNT_EVENTS, subject=user.id,
                                                  exclude_outcomes=NOISE)),
            pending_pushes=tuple(p for p, _ in self.stepup.pending_pushes(session)),
            has_password=bool(getattr(store.users.get(user.id), "password_hash", "")),
        )

    def user(self, user_id: str) -> UserRecord | None:
        return self.rt.store.users.get(user_id)
