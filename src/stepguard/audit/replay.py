"""What-if replay: the decisions recorded in the ledger, decided again by a candidate policy.

Recording. Every sealed decision entry (and every plain-allow summary) carries `detail.input`:
what `core.decide` was given besides the request summary the entry already holds — the scheme,
the policy's declared attributes, the session's authentication events, created and last-seen
times and groups, the session's live grants — and the risk (`risk_score`, `risk_level`,
`signals`). On the request path it is a `DecisionInput` holding references (no copying); the
audit writer's thread turns it into JSON (`as_json`) when it checks the event.

Replaying. `replay(entries, candidate)` rebuilds each recorded request (a summary stands for
`count` requests, one per recorded method and path) and decides it with `candidate` at the
entry's own time. Pure: no clock, no I/O; the same entries and policy give the same report, byte
for byte. A request is *undetermined* (counted, never guessed) when the candidate looks at
something the ledger does not keep: the query string, user agent, device id, the user's name or
email, an attribute not recorded, or — with pseudonymised client IPs — a network.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stepguard.audit.ledger import AuditEntry
from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import decide
from stepguard.core.decision import Decision
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.core.policy import Policy, Rule
from stepguard.core.risk import RiskAssessment, Signal

INPUT_VERSION = 1
UNRECORDED_NAMES = frozenset({"request.query", "request.user_agent", "request.device",
                              "user.name", "user.email"})
NETWORK_NAMES = frozenset({"request.ip", "network", "ip"})
_SESSION = "replayed-session"


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True, slots=True)
class DecisionInput:
    """A decision's inputs by reference; `as_json` (in the audit writer's thread) copies them."""

    context: RequestContext
    state: SessionState | None
    grants: tuple[Grant, ...]
    attributes: frozenset[str]  # the names the policy declares: only these are kept
    risk: RiskAssessment | None = None

    def risk_detail(self) -> dict[str, Any]:
        """The risk as decision entries record it (for summaries, which have no risk fields)."""
        risk = self.risk
        if risk is None:
            return {}
        return {"risk_score": risk.score, "risk_level": risk.level, "signals": list(risk.names)}

    def as_json(self) -> dict[str, Any]:
        context, state = self.context, self.state
        # Only the HTTP door's declared attributes are kept: another door redacts its own
        # arguments (the MCP door's `mcp.redact`), and a rule reading them replays undetermined.
        recorded: dict[str, Any] = {
            "v": INPUT_VERSION,
            "scheme": context.scheme,
            "door": context.door,
            "attrs": {k: _scalar(v) for k, v in context.attributes.items()
                      if k in self.attributes} if context.door == "http" else {},
            "session": None,
            "grants": [],
        }
        if context.call_digest:
            recorded["call_digest"] = context.call_digest
        if state is not None:
            recorded["session"] = {
                "created": state.created, "last_seen": state.last_seen,
                "groups": sorted(state.subject.groups),
                "events": [[e.factor, e.level.label, e.at, list(e.amr)] for e in state.events],
            }
            recorded["grants"] = [
                [g.scope, g.level.label, g.factor, g.granted_at, g.expires_at, g.binding,
                 g.single_use, list(g.amr)]
                for g in self.grants if g.session_id == state.id]
        return recorded


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | frozenset | set):
        return [_scalar(v) for v in value]
    return str(value)


# --------------------------------------------------------------------------- replaying


@dataclass(frozen=True, slots=True)
class Replayed:
    """One recorded request as the core sees it, with how many requests it stands for."""

    seq: int
    at: float
    subject: str
    context: RequestContext
    state: SessionState | None
    risk: RiskAssessment
    grants: tuple[Grant, ...]
    before: str  # the enforced outcome recorded (allow, step_up, deny, login)
    before_rule: str
    count: int
    attributes: frozenset[str]  # attribute names the ledger kept for this request
    pseudonymised: bool


@dataclass(slots=True)
class Example:
    seq: int
    at: float
    subject: str
    method: str
    host: str
    path: str
    before_rule: str
    after_rule: str


@dataclass(slots=True)
class ReplayReport:
    """Counts of requests per (candidate rule, before → after) and examples of each change."""

    entries: int = 0  # ledger entries read
    requests: int = 0  # requests they stand for
    replayed: int = 0
    changed: int = 0
    undetermined: int = 0
    not_recorded: int = 0  # decision entries without inputs (written before replay existed)
    transitions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str, str], list[Example]] = field(
        default_factory=lambda: defaultdict(list))
    undetermined_by_rule: Counter[str] = field(default_factory=Counter)

    def merge(self, other: ReplayReport, *, examples: int) -> None:
        """Add another slice's counts; keep the `examples` lowest-seq examples of each change
        (so the report is the same whichever way the ledger was sliced)."""
        for name in ("entries", "requests", "replayed", "changed", "undetermined",
                     "not_recorded"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.transitions.update(other.transitions)
        self.undetermined_by_rule.update(other.undetermined_by_rule)
        for key, found in other.examples.items():
            both = sorted([*self.examples.get(key, []), *found], key=lambda ex: ex.seq)
            self.examples[key] = both[:examples]

    def as_json(self) -> dict[str, Any]:
        changes = [
            {"rule": rule, "from": before, "to": after, "requests": count,
             "examples": [_example(ex) for ex in self.examples.get((rule, before, after), [])]}
            for (rule, before, after), count in sorted(self.transitions.items())
            if before != after
        ]
        return {
            "entries": self.entries, "requests": self.requests, "replayed": self.replayed,
            "changed": self.changed, "unchanged": self.replayed - self.changed,
            "undetermined": self.undetermined, "not_recorded": self.not_recorded,
            "undetermined_by_rule": dict(sorted(self.undetermined_by_rule.items())),
            "changes": changes,
        }

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["rule", "from", "to", "requests", "example_seqs"])
        for (rule, before, after), count in sorted(self.transitions.items()):
            if before == after:
                continue
            seqs = " ".join(str(ex.seq) for ex in self.examples.get((rule, before, after), []))
            writer.writerow([rule, before, after, count, seqs])
        return out.getvalue()


def _example(example: Example) -> dict[str, Any]:
    return {name: getattr(example, name) for name in Example.__slots__}


def replay(entries: Iterable[AuditEntry], candidate: Policy, *,
           examples: int = 3) -> ReplayReport:
    """Decide every recorded request again with `candidate`; count what changes."""
    report = ReplayReport()
    blind = _blind_rules(candidate)
    for entry in entries:
        if entry.kind != "decision":
            continue
        report.entries += 1
        requests = list(recorded_requests(entry))
        if not requests:
            report.not_recorded += 1
            report.requests += _count(entry)
            continue
        for request in requests:
            report.requests += request.count
            _replay_one(request, candidate, blind, report, examples)
    return report


def _replay_one(request: Replayed, candidate: Policy, blind: Mapping[str, frozenset[str]],
                report: ReplayReport, examples: int) -> None:
    decision = decide(candidate, request.context, request.state, request.risk, request.grants,
                      request.at)
    unknown = _looked_at_blind(candidate, request, decision, blind)
    if unknown:
        report.undetermined += request.count
        report.undetermined_by_rule[unknown] += request.count
        return
    after = outcome_name(decision)
    report.replayed += request.count
    key = (decision.rule, request.before, after)
    report.transitions[key] += request.count
    if request.before != after:
        report.changed += request.count
        shown = report.examples[key]
        if len(shown) < examples:
            c = request.context
            shown.append(Example(request.seq, request.at, request.subject, c.method, c.host,
                                 c.path, request.before_rule, decision.rule))


def outcome_name(decision: Decision) -> str:
    """The outcome as the ledger names it (`login` for a first sign-in)."""
    return "login" if decision.login else decision.outcome.value


def _blind_rules(policy: Policy) -> dict[str, frozenset[str]]:
    """Per rule: the names its condition reads that the ledger may not hold."""
    blind: dict[str, frozenset[str]] = {}
    for rule in (*policy.rules, policy.default):
        names = set(rule.when.names) if rule.when is not None else set()
        if any(label.startswith("networks ") for _, label in rule.checks):
            names.add("network")
        names = {n if n not in policy.networks else "network" for n in names}
        risky = (names & (UNRECORDED_NAMES | NETWORK_NAMES)) | (names & set(policy.attributes))
        if risky:
            blind[rule.name] = frozenset(risky)
    return blind


def _looked_at_blind(policy: Policy, request: Replayed, decision: Decision,
                     blind: Mapping[str, frozenset[str]]) -> str:
    """The first rule up to the deciding one whose condition reads something this request's
    record lacks ("" when none): its verdict would be a guess."""
    if not blind:
        return ""
    rules: tuple[Rule, ...] = (*policy.candidates(request.context), policy.default)
    for rule in rules:
        names = blind.get(rule.name)
        if names and _lacks(names, request):
            return rule.name
        if rule.name == decision.rule:
            break
    return ""


def _lacks(names: frozenset[str], request: Replayed) -> bool:
    for name in names:
        if name in UNRECORDED_NAMES:
            return True
        if name in NETWORK_NAMES:
            if request.pseudonymised:
                return True
        elif name not in request.attributes:
            return True
    return False


def _count(entry: AuditEntry) -> int:
    count = entry.detail.get("count", 1) if entry.outcome == "allow_summary" else 1
    return count if isinstance(count, int) and count > 0 else 1


def recorded_requests(entry: AuditEntry) -> Iterable[Replayed]:
    """The requests a decision entry records (none when it has no `input`)."""
    recorded = entry.detail.get("input")
    if not isinstance(recorded, Mapping) or recorded.get("v") != INPUT_VERSION:
        return
    ip = str(entry.request.get("client_ip", ""))
    pseudonymised = ip.startswith("ip:")
    attributes = dict(recorded.get("attrs") or {})
    state = _state(entry.subject, recorded.get("session"))
    risk = _risk(entry.detail)
    grants = _grants(entry.subject, recorded.get("grants"))
    before, before_rule = _before(entry)
    host = str(entry.request.get("host", ""))

    def one(method: str, path: str, at: float, count: int) -> Replayed:
        context = RequestContext(
            method=method, host=host, path=path, scheme=str(recorded.get("scheme") or "https"),
            client_ip="" if pseudonymised else ip, action=str(entry.request.get("action", "")),
            attributes=attributes, door=str(recorded.get("door") or "http"),
            call_digest=str(recorded.get("call_digest") or ""))
        return Replayed(seq=entry.seq, at=at, subject=entry.subject, context=context,
                        state=state, risk=risk, grants=grants, before=before,
                        before_rule=before_rule, count=count,
                        attributes=frozenset(attributes), pseudonymised=pseudonymised)

    if entry.outcome == "allow_summary":
        first = float(entry.detail.get("first", entry.at))
        for method, path, count in entry.detail.get("requests", []):
            yield one(str(method), str(path), first, int(count))
        return
    yield one(str(entry.request.get("method", "GET")), str(entry.request.get("path", "/")),
              entry.at, 1)


def _before(entry: AuditEntry) -> tuple[str, str]:
    """The enforced outcome and rule, as recorded (report-mode entries name both)."""
    enforced = entry.detail.get("enforced")
    if isinstance(enforced, Mapping):
        return str(enforced.get("outcome", "")), str(enforced.get("rule", ""))
    if entry.outcome == "allow_summary":
        return "allow", entry.rule
    return (entry.outcome if entry.outcome == "login" else entry.decision), entry.rule


def _state(subject: str, recorded: Any) -> SessionState | None:
    if not isinstance(recorded, Mapping):
        return None
    events = tuple(AuthEvent(factor=str(f), amr=tuple(amr), level=Level.parse(str(lvl)),
                             at=float(at)) for f, lvl, at, amr in recorded.get("events", []))
    return SessionState(id=_SESSION, subject=Subject(id=subject,
                                                    groups=frozenset(recorded.get("groups", []))),
                        created=float(recorded["created"]),
                        last_seen=float(recorded["last_seen"]), events=events)


def _grants(subject: str, recorded: Any) -> tuple[Grant, ...]:
    if not isinstance(recorded, list):
        return ()
    return tuple(
        Grant(id=f"g{i}", subject_id=subject, session_id=_SESSION, scope=str(scope),
              level=Level.parse(str(level)), amr=tuple(amr), granted_at=float(granted),
              expires_at=float(expires), single_use=bool(single), binding=str(binding),
              factor=str(factor))
        for i, (scope, level, factor, granted, expires, binding, single, amr)
        in enumerate(recorded))


def _risk(detail: Mapping[str, Any]) -> RiskAssessment:
    signals = tuple(Signal(str(name), 0, "") for name in detail.get("signals", []))
    return RiskAssessment(score=int(detail.get("risk_score", 0)),
                          level=str(detail.get("risk_level", "low")), signals=signals)


def render_text(report: ReplayReport) -> str:
    """The report for people: totals, then each change per rule with its examples."""
    data = report.as_json()
    lines = [f"{data['entries']} ledger entries, {data['requests']} requests: "
             f"{data['replayed']} replayed, {data['changed']} would change, "
             f"{data['undetermined']} undetermined, {data['not_recorded']} without recorded "
             "inputs"]
    for rule, count in data["undetermined_by_rule"].items():
        lines.append(f"  undetermined at rule {rule}: {count} (it reads what the ledger "
                     "does not keep)")
    if not data["changes"]:
        lines.append("No request would change outcome.")
    for change in data["changes"]:
        lines.append(f"{change['rule']}: {change['from']} -> {change['to']}: "
                     f"{change['requests']} requests")
        for ex in change["examples"]:
            lines.append(f"    #{ex['seq']} {ex['subject']} {ex['method']} {ex['host']}"
                         f"{ex['path']} (was rule {ex['before_rule']})")
    return "\n".join(lines) + "\n"


def dumps(report: ReplayReport) -> str:
    return json.dumps(report.as_json(), indent=2, sort_keys=True) + "\n"
