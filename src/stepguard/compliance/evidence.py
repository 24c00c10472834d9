"""What a compliance report is built from: the configuration and policy in force, the ledger's
counts for the period (database aggregates), samples, and the chain verification result."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from stepguard.audit.ledger import AuditEntry, VerifyReport
from stepguard.config.schema import StepguardConfig
from stepguard.core.levels import Level
from stepguard.core.policy import Policy, Rule
from stepguard.storage.audit_stats import Tally


@dataclass
class Evidence:
    config: StepguardConfig
    policy: Policy
    policy_text: str
    since: float
    until: float
    generated: float
    tallies: list[Tally]
    chain: VerifyReport
    ip_named: int
    ip_pseudonymised: int
    samples: dict[str, list[AuditEntry]] = field(default_factory=dict)

    @property
    def policy_digest(self) -> str:
        return hashlib.sha256(self.policy_text.encode()).hexdigest()

    def count(self, *, kind: str | None = None, outcome: str | None = None,
              decision: str | None = None, factor: str | None = None,
              prefix: str | None = None, requests: bool = False) -> int:
        """Entries (or requests) matching every given field; `prefix` matches outcomes."""
        total = 0
        for tally in self.tallies:
            if ((kind is None or tally.kind == kind)
                    and (outcome is None or tally.outcome == outcome)
                    and (decision is None or tally.decision == decision)
                    and (factor is None or tally.factor == factor)
                    and (prefix is None or tally.outcome.startswith(prefix))):
                total += tally.requests if requests else tally.entries
        return total

    def rules_at(self, level: Level) -> list[Rule]:
        return [r for r in self.policy.rules
                if r.requirement is not None and r.requirement.level >= level and not r.report]

    def report_rules(self) -> list[Rule]:
        return [r for r in self.policy.rules if r.report]

    def by_factor(self, outcome: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for tally in self.tallies:
            if tally.kind == "verification" and tally.outcome == outcome:
                found[tally.factor or "-"] = found.get(tally.factor or "-", 0) + tally.entries
        return dict(sorted(found.items()))


def describe_rule(rule: Rule) -> str:
    r = rule.requirement
    if r is None:
        return f"{rule.name}: deny" if rule.deny is not None else f"{rule.name}: public"
    parts = [r.level.label]
    if r.max_age is not None:
        parts.append(f"max_age {int(r.max_age)}s")
    if r.methods:
        parts.append("methods " + ",".join(sorted(r.methods)))
    if r.single_use:
        parts.append("single use")
    if r.bind:
        parts.append("bound to " + ",".join(r.bind))
    return f"{rule.name}: " + "; ".join(parts)


def entry_row(entry: AuditEntry) -> dict[str, Any]:
    """An entry as the report shows it (already redacted by the ledger)."""
    request = entry.request
    return {"seq": entry.seq, "at": entry.at, "kind": entry.kind, "subject": entry.subject,
            "rule": entry.rule, "factor": entry.factor, "outcome": entry.outcome,
            "request": f"{request.get('method', '')} {request.get('host', '')}"
                       f"{request.get('path', '')}".strip(),
            "ip": request.get("client_ip", ""), "hash": entry.hash[:16]}
