"""Replay never guesses: what the ledger does not keep makes a request undetermined."""

from __future__ import annotations

from stepguard.audit.ledger import AuditEvent, seal_chain
from stepguard.audit.replay import DecisionInput, recorded_requests, render_text, replay
from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.levels import Level
from stepguard.core.policy import compile_policy
from stepguard.core.risk import RiskAssessment, Signal

NOW = 1_900_000_000.0
STATE = SessionState(id="s1", subject=Subject(id="u1", groups=frozenset({"staff"})),
                     created=NOW - 100, last_seen=NOW - 1,
                     events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1,
                                       at=NOW - 100),))


def entry_for(path: str, *, ip: str = "203.0.113.7", risk: RiskAssessment | None = None,
              attrs: dict[str, object] | None = None, recorded: bool = True) -> AuditEvent:
    context = RequestContext(method="GET", host="app.test", path=path, client_ip=ip,
                             attributes=attrs or {})
    risk = risk or RiskAssessment()
    detail: dict[str, object] = {"risk_score": risk.score, "risk_level": risk.level,
                                 "signals": list(risk.names)}
    if recorded:
        detail["input"] = DecisionInput(context, STATE, (), frozenset({"amount"}), risk)
    return AuditEvent(at=NOW, kind="decision", subject="u1",
                      request={"method": "GET", "host": "app.test", "path": path,
                               "client_ip": ip},
                      decision="allow", rule="default", outcome="allow", detail=detail)


def policy(rule: dict[str, object]) -> object:
    return compile_policy({"networks": {"office": ["10.0.0.0/8"]},
                           "attributes": {"amount": "number", "payee": "string"},
                           "rules": [{"name": "r", **rule}], "default": {"level": "aal1"}})


def test_a_rule_reading_the_query_string_is_undetermined() -> None:
    entries = seal_chain([entry_for("/a")])
    report = replay(entries, policy({"when": "request.query == ''", "deny": "x"}))  # type: ignore[arg-type]
    assert report.undetermined == 1 and report.replayed == 0
    assert report.undetermined_by_rule == {"r": 1}


def test_networks_are_replayed_from_raw_ips_and_undetermined_when_pseudonymised() -> None:
    rule = {"match": {"networks": ["office"]}, "deny": "x"}
    raw = replay(seal_chain([entry_for("/a", ip="10.1.2.3")]), policy(rule))  # type: ignore[arg-type]
    assert raw.changed == 1 and ("r", "allow", "deny") in raw.transitions
    hidden = replay(seal_chain([entry_for("/a", ip="ip:0123456789abcdef0123")]),
                    policy(rule))  # type: ignore[arg-type]
    assert hidden.undetermined == 1 and hidden.changed == 0


def test_recorded_attributes_risk_and_groups_are_replayed_and_others_are_not_guessed() -> None:
    entries = seal_chain([entry_for("/t", attrs={"amount": 5000, "secret_code": "123456"},
                                    risk=RiskAssessment(40, "medium",
                                                        (Signal("new_device", 40, "x"),)))])
    assert "secret_code" not in str(entries[0].detail) and "123456" not in str(entries[0].detail)
    assert replay(entries, policy({"when": "amount > 1000 and risk.score >= 40 and "
                                          "'new_device' in risk.signals and "
                                          "'staff' in user.groups", "deny": "x"})).changed == 1  # type: ignore[arg-type]
    assert replay(entries, policy({"when": "payee == 'Bob'", "deny": "x"})).undetermined == 1  # type: ignore[arg-type]


def test_entries_without_inputs_are_counted_not_replayed() -> None:
    report = replay(seal_chain([entry_for("/a", recorded=False)]), policy({"deny": "x"}))  # type: ignore[arg-type]
    assert report.not_recorded == 1 and report.replayed == 0
    assert "1 without recorded inputs" in render_text(report)
    assert "No request would change outcome." in render_text(report)


def test_another_doors_arguments_are_not_recorded_and_its_calls_replay_as_that_door() -> None:
    from stepguard.core.toolcall import ToolCall, call_context

    context = call_context(ToolCall(server="bank", tool="transfer",
                                    arguments={"to": "DE-secret-iban", "amount": 5}),
                           digest="ab" * 32)
    recorded = DecisionInput(context, STATE, (), frozenset({"args.to", "args.amount"})).as_json()
    assert recorded["attrs"] == {} and recorded["door"] == "mcp"
    assert "DE-secret-iban" not in str(recorded)
    event = AuditEvent(at=NOW, kind="decision", subject="u1",
                       request={"method": context.method, "host": "bank",
                                "path": "/bank/transfer", "action": "transfer"},
                       decision="allow", rule="default", outcome="allow",
                       detail={"input": recorded})
    (request,) = list(recorded_requests(seal_chain([event])[0]))
    assert request.context.door == "mcp" and request.context.call_digest == "ab" * 32
